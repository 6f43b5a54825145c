// The Cloud API face of wagate (docs/cloud-api.md) against a Baileys 7 contact, through
// wagate-sim. This process plays the Frappe app `frappe_whatsapp`: its calls
// (`{url}/{version}/{phone_id}/messages` with `authorization: Bearer`), the fields it
// reads, and its webhook endpoint (verification handshake; for media, the download inside
// the webhook handler). Needs WAGATE_BIN (a sandbox build of `wagate`) and the simulator
// binary (see harness).
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import http from 'node:http'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { downloadMediaMessage, WA_CERT_DETAILS } from 'baileys'
import { startSimulator, waitUntil } from '../lib/harness.mjs'
import { WAIT, failureContext, linkBaileys, linkSession, startGateway, startHookServer } from '../lib/parties.mjs'

const WAGATE_PHONE = '15557100001'
const BAILEYS_PHONE = '15557100002'
const VERIFY_TOKEN = 'frappe-verify-token'
const APP_SECRET = 'frappe-app-secret'

process.env.NODE_TLS_REJECT_UNAUTHORIZED = '0'

const s = {}
const sha256 = bytes => createHash('sha256').update(bytes).digest('hex')
const PDF = Buffer.concat([Buffer.from('%PDF-1.4\n'), randomBytes(20000)])
const PHOTO = Buffer.concat([Buffer.from('89504e470d0a1a0a', 'hex'), randomBytes(30000)])

/** WhatsApp Settings of the app. */
const settings = { version: 'v19.0', phone_id: '110000000000077', business_id: '210000000000077', app_id: '310000000000077', token: 'EAAG' + randomBytes(24).toString('hex') }
const headers = () => ({ authorization: `Bearer ${settings.token}`, 'content-type': 'application/json' })

/** `make_post_request(f"{url}/{version}/{phone_id}/messages", headers, data=json.dumps(data))`. */
async function notify (data) {
  const res = await fetch(`${settings.url}/${settings.version}/${settings.phone_id}/messages`, { method: 'POST', headers: headers(), body: JSON.stringify(data) })
  assert.equal(res.headers.get('content-type'), 'application/json')
  const json = await res.json()
  assert.equal(res.status, 200, JSON.stringify(json))
  return json.messages[0].id
}

/** The app's webhook endpoint (`utils/webhook.py`), with a signature check. */
async function startFrappe () {
  const hooks = []
  const verifications = []
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://x')
    if (req.method === 'GET') {
      verifications.push(Object.fromEntries(url.searchParams))
      if (url.searchParams.get('hub.verify_token') !== VERIFY_TOKEN) { res.writeHead(403); return res.end('Verify token does not match') }
      return res.end(url.searchParams.get('hub.challenge'))
    }
    const chunks = []
    for await (const chunk of req) chunks.push(chunk)
    const body = Buffer.concat(chunks)
    const expected = createHmac('sha256', APP_SECRET).update(body).digest()
    const given = Buffer.from((req.headers['x-hub-signature-256'] ?? '').replace(/^sha256=/, ''), 'hex')
    const signatureOk = given.length === expected.length && timingSafeEqual(given, expected)
    const json = JSON.parse(body)
    const message = json.entry?.[0]?.changes?.[0]?.value?.messages?.[0]
    let download = null
    if (message && ['image', 'audio', 'video', 'document'].includes(message.type)) {
      const auth = { Authorization: 'Bearer ' + settings.token }
      const meta = await (await fetch(`${settings.url}/${settings.version}/${message[message.type].id}/`, { headers: auth })).json()
      const file = await fetch(meta.url, { headers: auth })
      download = { status: file.status, meta, sha256: sha256(Buffer.from(await file.arrayBuffer())) }
    }
    hooks.push({ json, signatureOk, download })
    res.end('{}')
  })
  await new Promise(resolve => server.listen(0, '127.0.0.1', resolve))
  const stop = () => { server.closeAllConnections(); server.close() }
  return { hooks, verifications, url: `http://127.0.0.1:${server.address().port}/api/method/frappe_whatsapp.utils.webhook.webhook`, stop }
}

const valueOf = hook => hook.json.entry[0].changes[0].value
const messageHook = (what, check) => waitUntil(() => s.frappe.hooks.find(h => valueOf(h).messages && check(valueOf(h).messages[0])), WAIT, what)
const statusesOf = wamid => s.frappe.hooks.map(valueOf).filter(v => v.statuses?.[0]?.id === wamid).map(v => v.statuses[0].status)

/** The Cloud webhook of one message, as Meta documents it, id and timestamp checked then fixed. */
function normalized (hook) {
  const json = structuredClone(hook.json)
  const message = json.entry[0].changes[0].value.messages[0]
  assert.match(message.id, /^wamid\./)
  assert.match(message.timestamp, /^\d{10}$/)
  message.id = '<wamid>'
  message.timestamp = '<timestamp>'
  return json
}

function expected (message) {
  return {
    object: 'whatsapp_business_account',
    entry: [{
      id: settings.business_id,
      changes: [{
        field: 'messages',
        value: {
          messaging_product: 'whatsapp',
          metadata: { display_phone_number: WAGATE_PHONE, phone_number_id: settings.phone_id },
          contacts: [{ profile: { name: s.pushName }, wa_id: BAILEYS_PHONE }],
          messages: [{ from: BAILEYS_PHONE, id: '<wamid>', timestamp: '<timestamp>', ...message }]
        }
      }]
    }]
  }
}

const baileysChat = () => `${WAGATE_PHONE}@s.whatsapp.net`
const receivedBy = (check, what) => waitUntil(() => s.baileys.incoming.find(check), WAIT, what)
const guard = fn => async () => { try { await fn() } catch (e) { e.message += failureContext(s); throw e } }

describe('frappe_whatsapp (Cloud API) <-> wagate <-> Baileys 7', () => {
  before(async () => {
    s.sim = await startSimulator()
    WA_CERT_DETAILS.PUBLIC_KEY = Buffer.from(s.sim.info.root_public_key, 'hex')
    s.files = await startHookServer()
    s.files.files.set('/files/invoice.pdf', { type: 'application/pdf', bytes: PDF })
    s.files.files.set('/files/photo.png', { type: 'image/png', bytes: PHOTO })
    s.frappe = await startFrappe()
    s.gateway = await startGateway(s.sim, s.files.url)
    settings.url = `${s.gateway.url}/cloud`
  })

  after(async () => {
    await s.baileys?.stop()
    await s.gateway?.stop()
    s.frappe?.stop()
    s.files?.stop()
    await s.sim?.stop()
  })

  it('links wagate and Baileys, then exposes the session as a Cloud API number (hub.challenge)', { timeout: 90000 }, guard(async () => {
    await linkSession(s.gateway, s.sim, 'W', WAGATE_PHONE)
    s.baileys = await linkBaileys(s.sim, BAILEYS_PHONE)
    s.pushName = s.baileys.sock.user?.name ?? ''
    const put = await s.gateway.api('PUT', '/v1/sessions/W/cloud-api', {
      phone_number_id: settings.phone_id, waba_id: settings.business_id, app_id: settings.app_id, access_token: settings.token,
      webhook: { url: s.frappe.url, verify_token: VERIFY_TOKEN, app_secret: APP_SECRET }
    })
    assert.equal(put.status, 200, JSON.stringify(put.json))
    assert.equal(s.frappe.verifications.length, 1)
    assert.equal(s.frappe.verifications[0]['hub.mode'], 'subscribe')
    assert.equal(s.frappe.verifications[0]['hub.verify_token'], VERIFY_TOKEN)
  }))

  it('a text to Baileys; its statuses go sent -> delivered -> read', { timeout: 60000 }, guard(async () => {
    s.text = await notify({ messaging_product: 'whatsapp', to: BAILEYS_PHONE, type: 'text', text: { preview_url: true, body: 'Your order shipped' } })
    const message = await receivedBy(m => (m.message?.conversation ?? m.message?.extendedTextMessage?.text) === 'Your order shipped', 'the text at Baileys')
    s.textKey = message.key
    await waitUntil(() => statusesOf(s.text).includes('delivered'), WAIT, 'delivered')
    await s.baileys.sock.readMessages([message.key])
    await waitUntil(() => statusesOf(s.text).includes('read'), WAIT, 'read')
    assert.deepEqual(statusesOf(s.text), ['sent', 'delivered', 'read'])
    const read = s.frappe.hooks.find(h => valueOf(h).statuses?.[0]?.status === 'read')
    assert.deepEqual(valueOf(read).statuses[0], { id: s.text, status: 'read', timestamp: valueOf(read).statuses[0].timestamp, recipient_id: BAILEYS_PHONE })
  }))

  it('a template with body parameters and a document header by link, and an image by link', { timeout: 60000 }, guard(async () => {
    const created = await fetch(`${settings.url}/${settings.version}/${settings.business_id}/message_templates`, {
      method: 'POST',
      headers: headers(),
      body: JSON.stringify({
        name: 'invoice_ready', language: 'en', category: 'UTILITY',
        components: [{ type: 'BODY', text: 'Hello {{1}}, invoice {{2}} is ready.', example: { body_text: [['A', 'B']] } },
          { type: 'header', format: 'DOCUMENT' }, { type: 'FOOTER', text: 'Acme' }]
      })
    })
    assert.equal(created.status, 200, await created.clone().text())
    await notify({
      messaging_product: 'whatsapp', to: BAILEYS_PHONE, type: 'template',
      template: { name: 'invoice_ready', language: { code: 'en' }, components: [
        { type: 'header', parameters: [{ type: 'document', document: { link: `${s.files.base}/files/invoice.pdf`, filename: 'INV-9.pdf' } }] },
        { type: 'body', parameters: [{ type: 'text', text: 'Bo' }, { type: 'text', text: 'INV-9' }] }] }
    })
    const message = await receivedBy(m => (m.message?.documentMessage ?? m.message?.documentWithCaptionMessage?.message?.documentMessage)?.fileName === 'INV-9.pdf', 'the template at Baileys')
    const doc = message.message.documentMessage ?? message.message.documentWithCaptionMessage.message.documentMessage
    assert.equal(doc.caption, 'Hello Bo, invoice INV-9 is ready.\n\n_Acme_')
    assert.equal(sha256(await downloadMediaMessage(message, 'buffer', {})), sha256(PDF))

    await notify({ messaging_product: 'whatsapp', to: BAILEYS_PHONE, type: 'image', image: { link: `${s.files.base}/files/photo.png`, caption: 'Parcel' } })
    const image = await receivedBy(m => m.message?.imageMessage?.caption === 'Parcel', 'the image at Baileys')
    assert.equal(sha256(await downloadMediaMessage(image, 'buffer', {})), sha256(PHOTO))
  }))

  it('Baileys writes: text, image (downloaded inside the webhook handler), reply and reaction arrive in Cloud form', { timeout: 90000 }, guard(async () => {
    s.questionId = (await s.baileys.sock.sendMessage(baileysChat(), { text: 'Where is my parcel?' })).key.id
    const text = await messageHook('the text webhook', m => m.text?.body === 'Where is my parcel?')
    assert.ok(text.signatureOk, 'X-Hub-Signature-256 verifies')
    assert.deepEqual(normalized(text), expected({ type: 'text', text: { body: 'Where is my parcel?' } }))
    s.question = valueOf(text).messages[0].id

    await s.baileys.sock.sendMessage(baileysChat(), { image: PHOTO, mimetype: 'image/png', caption: 'Broken' })
    const image = await messageHook('the image webhook', m => m.type === 'image')
    assert.ok(image.signatureOk)
    const part = valueOf(image).messages[0].image
    assert.deepEqual(normalized(image), expected({ type: 'image', image: { caption: 'Broken', mime_type: 'image/png', sha256: createHash('sha256').update(PHOTO).digest('base64'), id: part.id } }))
    assert.equal(image.download.status, 200)
    assert.equal(image.download.sha256, sha256(PHOTO), 'downloaded inside the webhook handler, intact')
    assert.equal(image.download.meta.sha256, sha256(PHOTO))
    assert.equal(image.download.meta.mime_type, 'image/png')

    await s.baileys.sock.sendMessage(baileysChat(), { text: 'Thanks' }, { quoted: { key: { ...s.textKey }, message: { conversation: 'Your order shipped' } } })
    const reply = await messageHook('the reply webhook', m => m.text?.body === 'Thanks')
    assert.deepEqual(valueOf(reply).messages[0].context, { from: WAGATE_PHONE, id: s.text })

    await s.baileys.sock.sendMessage(baileysChat(), { react: { text: '👍', key: s.textKey } })
    const reaction = await messageHook('the reaction webhook', m => m.type === 'reaction')
    assert.deepEqual(normalized(reaction), expected({ type: 'reaction', reaction: { message_id: s.text, emoji: '👍' } }))
  }))

  it('a reply and a reaction to Baileys\' message, and mark as read', { timeout: 60000 }, guard(async () => {
    await notify({ messaging_product: 'whatsapp', to: BAILEYS_PHONE, type: 'text', text: { body: 'Sorry about that' }, context: { message_id: s.question } })
    const reply = await receivedBy(m => m.message?.extendedTextMessage?.text === 'Sorry about that', 'the reply at Baileys')
    const quoted = reply.message.extendedTextMessage.contextInfo
    assert.equal(quoted?.stanzaId, s.questionId, JSON.stringify(reply.message))
    await notify({ messaging_product: 'whatsapp', to: BAILEYS_PHONE, type: 'reaction', reaction: { message_id: s.question, emoji: '🙏' } })
    const reaction = await receivedBy(m => m.message?.reactionMessage?.text === '🙏', 'the reaction at Baileys')
    assert.equal(reaction.message.reactionMessage.key.id, s.questionId, 'the same message')
    const res = await fetch(`${settings.url}/${settings.version}/${settings.phone_id}/messages`, {
      method: 'POST', headers: headers(), body: JSON.stringify({ messaging_product: 'whatsapp', status: 'read', message_id: s.question })
    })
    assert.deepEqual(await res.json(), { success: true })
  }))
})
