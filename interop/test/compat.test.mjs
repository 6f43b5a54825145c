// The ERPNext app `whatsapp_integration` against wagate, exactly as COMPAT.md describes it:
// Connect (polled every 5 s, and by a double-clicking user every 200 ms), the scan, its
// webhooks with its token, a text and a base64 PDF to a Baileys 7 peer, that peer's reply
// (quoting wagate's message) and a file back as compat messages.upsert, Delivered then
// Read, contact-info and presence. Needs WAGATE_BIN and the simulator binary (see harness).
import { createHash, randomBytes } from 'node:crypto'
import http from 'node:http'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { downloadMediaMessage, WA_CERT_DETAILS } from 'baileys'
import { control, formatEntry, sleep, startGateway, startSimulator, tail, waitUntil } from '../lib/harness.mjs'
import { WAIT, linkBaileys } from '../lib/parties.mjs'

const ERP_PHONE = '15557100001'
const PEER_PHONE = '15557100002'
const SESSION = 'WA-Acme_Ltd'
const TOKEN = 'erp-token-42'

// The simulator's media host has a self-signed certificate.
process.env.NODE_TLS_REJECT_UNAUTHORIZED = '0'

const sha256 = bytes => createHash('sha256').update(bytes).digest('hex')
const PDF = Buffer.concat([Buffer.from('%PDF-1.4\n'), randomBytes(300 * 1024)])
const RECEIPT = Buffer.concat([Buffer.from('%PDF-1.4\n'), randomBytes(50 * 1024)])

const s = {}

/** The ERPNext side's webhook endpoint: keeps every call with its headers. */
async function startErpReceiver () {
  const calls = []
  const server = http.createServer((req, res) => {
    let body = ''
    req.on('data', c => { body += c })
    req.on('end', () => {
      calls.push({ headers: req.headers, json: JSON.parse(body) })
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end('{"status":"success"}')
    })
  })
  await new Promise(resolve => server.listen(0, '127.0.0.1', resolve))
  const stop = () => { server.closeAllConnections(); server.close() }
  return { calls, url: `http://127.0.0.1:${server.address().port}/api/method/whatsapp_webhook`, stop }
}

function context () {
  const problems = (s.peer?.log.entries ?? []).filter(e => e.level === 'warn' || e.level === 'error').map(formatEntry)
  return tail(problems, 10, '\nBaileys warnings/errors:') + tail(s.gateway?.logs ?? [], 30, '\nwagate output:') +
    (s.sim ? tail(s.sim.output, 10, '\nsimulator output:') : '')
}

const events = name => s.erp.calls.filter(c => c.json.event === name)
const upserts = () => events('messages.upsert').map(c => c.json.messages[0])

describe('the ERPNext app drives wagate as it drove the Node service', () => {
  before(async () => {
    s.sim = await startSimulator()
    WA_CERT_DETAILS.PUBLIC_KEY = Buffer.from(s.sim.info.root_public_key, 'hex')
    s.erp = await startErpReceiver()
    s.gateway = await startGateway({ waUrl: s.sim.info.ws_url })
    s.peer = await linkBaileys(s.sim, PEER_PHONE)
  })

  after(async () => {
    await s.peer?.stop()
    await s.gateway?.stop()
    s.erp?.stop()
    await s.sim?.stop()
  })

  it('Connect: polled start calls and a double click never disturb the pairing', { timeout: 120000 }, async () => {
    try {
      const start = () => s.gateway.api('POST', '/sessions/start', { sessionId: SESSION, webhookUrl: s.erp.url, webhookToken: TOKEN })
      // The Connect dialog: again every 5 s until the answer holds a QR or Connected.
      let answer = await start()
      while (!answer.json?.qr && answer.json?.status !== 'Connected') {
        assert.equal(answer.status, 200, JSON.stringify(answer.json))
        await sleep(5000)
        answer = await start()
      }
      assert.equal(answer.json.status, 'QR Scan Required')
      assert.match(answer.json.qr, /^data:image\/png;base64,/)
      let clicking = true
      const clicker = (async () => {
        while (clicking) {
          const again = await start()
          assert.equal(again.status, 200, JSON.stringify(again.json))
          await sleep(200)
        }
      })()
      const view = await s.gateway.api('GET', `/v1/sessions/${SESSION}`)
      const scanned = await control(s.sim.info.control_url, 'POST', '/control/scan', { qr: view.json.qr, phone: ERP_PHONE })
      assert.equal(scanned.status, 200, scanned.text)
      await waitUntil(async () => (await s.gateway.api('GET', `/sessions/${SESSION}/status`)).json?.status === 'Connected',
        WAIT, 'the session to connect')
      await sleep(1000) // the double-clicking user keeps going a moment after the link
      clicking = false
      await clicker
      assert.deepEqual((await start()).json, { status: 'Connected' })
      const stats = await control(s.sim.info.control_url, 'GET', '/control/stats')
      // Baileys' pairing and wagate's: the start calls never made a second one.
      assert.equal(stats.json.totals.pairings, 2, `pairings: ${stats.text}`)
      await waitUntil(() => events('connection.update').some(c => c.json.status === 'Connected'), WAIT, 'Connected webhook')
      const words = events('connection.update').map(c => c.json.status)
      assert.equal(words[0], 'QR Scan Required', words.join(', '))
      assert.equal(words.at(-1), 'Connected', words.join(', '))
      for (const call of s.erp.calls) {
        assert.equal(call.headers['x-webhook-token'], TOKEN)
        assert.equal(call.headers['x-requested-with'], 'XMLHttpRequest')
        assert.equal(call.json.sessionId, SESSION)
      }
    } catch (e) { e.message += context(); throw e }
  })

  it('sends a text and a base64 PDF; Delivered then Read come back', { timeout: 90000 }, async () => {
    try {
      const text = await s.gateway.api('POST', '/sessions/send', { sessionId: SESSION, receiver: '+1 555 710 0002', message: 'Invoice ACC-7 is due' })
      assert.equal(text.status, 200, JSON.stringify(text.json))
      assert.equal(text.json.status, 'sent')
      s.textId = text.json.messageId
      const received = await waitUntil(() => s.peer.incoming.find(m => m.key.id === s.textId), WAIT, 'Baileys to get the text')
      s.textMessage = received
      assert.equal(received.message?.conversation ?? received.message?.extendedTextMessage?.text, 'Invoice ACC-7 is due')

      const pdf = await s.gateway.api('POST', '/sessions/send', {
        sessionId: SESSION, receiver: PEER_PHONE, message: 'Your invoice',
        media: { data: PDF.toString('base64'), mimetype: 'application/pdf', filename: 'ACC-7.pdf' }
      })
      assert.equal(pdf.status, 200, JSON.stringify(pdf.json))
      const doc = await waitUntil(() => s.peer.incoming.find(m => m.key.id === pdf.json.messageId), WAIT, 'Baileys to get the PDF')
      const document = doc.message?.documentMessage ?? doc.message?.documentWithCaptionMessage?.message?.documentMessage
      assert.equal(document?.fileName, 'ACC-7.pdf')
      assert.equal(document?.caption, 'Your invoice')
      const bytes = await downloadMediaMessage(doc, 'buffer', {})
      assert.equal(sha256(bytes), sha256(PDF), 'the PDF arrives intact')

      await s.peer.sock.readMessages([received.key])
      const statuses = () => events('message.status').filter(c => c.json.messageId === s.textId).map(c => c.json.status)
      await waitUntil(() => statuses().includes('Read'), WAIT, 'message.status Read')
      const order = statuses()
      assert.ok(order.indexOf('Delivered') >= 0 && order.indexOf('Delivered') < order.indexOf('Read'), order.join(', '))
      const read = events('message.status').find(c => c.json.status === 'Read').json
      assert.equal(typeof read.timestamp, 'number')
    } catch (e) { e.message += context(); throw e }
  })

  it("hears the peer's reply (quoting wagate's message) and a file, with its bytes", { timeout: 60000 }, async () => {
    try {
      const jid = `${ERP_PHONE}@s.whatsapp.net`
      const reply = await s.peer.sock.sendMessage(jid, { text: 'Paid this morning' }, { quoted: s.textMessage })
      const file = await s.peer.sock.sendMessage(jid, { document: RECEIPT, mimetype: 'application/pdf', fileName: 'receipt.pdf' })
      await waitUntil(() => upserts().some(m => m.id === file.key.id), WAIT, 'the file as messages.upsert')
      const heard = upserts().find(m => m.id === reply.key.id)
      assert.ok(heard, 'the reply came before the file')
      assert.equal(heard.from, PEER_PHONE)
      assert.equal(heard.text, 'Paid this morning')
      assert.deepEqual(heard.replyTo, { messageId: s.textId, text: 'Invoice ACC-7 is due' })
      assert.equal(heard.media, null)
      assert.equal(heard.isGroup, false)
      const withFile = upserts().find(m => m.id === file.key.id)
      assert.equal(withFile.text, '[Media: document]')
      assert.equal(withFile.media.mimetype, 'application/pdf')
      assert.equal(withFile.media.filename, 'receipt.pdf')
      assert.equal(sha256(Buffer.from(withFile.media.data, 'base64')), sha256(RECEIPT), 'the file arrives whole')
      const order = upserts().map(m => m.id)
      assert.ok(order.indexOf(reply.key.id) < order.indexOf(file.key.id), 'in the order they were sent')
    } catch (e) { e.message += context(); throw e }
  })

  it('contact-info and presence of the peer', { timeout: 60000 }, async () => {
    try {
      const profile = { phone: PEER_PHONE, about: 'Accounts payable', picture_url: 'https://pps.example/peer.jpg' }
      assert.equal((await control(s.sim.info.control_url, 'POST', '/control/profile', profile)).status, 200)
      const info = await s.gateway.api('POST', '/sessions/contact-info', { sessionId: SESSION, phone: PEER_PHONE })
      assert.equal(info.status, 200, JSON.stringify(info.json))
      assert.deepEqual(info.json, {
        status: 'success', exists: true, about: 'Accounts payable', profilePicture: 'https://pps.example/peer.jpg', jid: `${PEER_PHONE}@s.whatsapp.net`
      })
      // Baileys, asked the same, reads the same from the simulator.
      assert.equal(await s.peer.sock.profilePictureUrl(`${PEER_PHONE}@s.whatsapp.net`, 'image'), 'https://pps.example/peer.jpg')

      const sub = await s.gateway.api('POST', '/sessions/subscribe-presence', { sessionId: SESSION, phone: PEER_PHONE })
      assert.equal(sub.status, 200, JSON.stringify(sub.json))
      assert.equal(sub.json.status, 'success')
      const presences = () => events('presence.update').map(c => c.json)
      await s.peer.sock.sendPresenceUpdate('available')
      await s.peer.sock.sendPresenceUpdate('composing', `${ERP_PHONE}@s.whatsapp.net`)
      await waitUntil(() => presences().some(p => p.presence.lastKnownPresence === 'composing'), WAIT, 'presence.update composing')
      assert.ok(presences().some(p => p.presence.lastKnownPresence === 'available'), JSON.stringify(presences()))
      for (const p of presences()) assert.equal(p.from, PEER_PHONE)
    } catch (e) { e.message += context(); throw e }
  })
})
