// wagate <-> Baileys 7 through wagate-sim: texts, media, locations, replies, reactions, read
// receipts and the offline queue, both ways. The simulator relays without decrypting, so each
// arrival proves Signal interop between the two clients, and each file that comes out intact
// proves the media encryption does. Needs WAGATE_BIN (a sandbox build of `wagate`) and the
// simulator binary (see harness).
import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { downloadMediaMessage, WA_CERT_DETAILS } from 'baileys'
import { formatEntry, startSimulator, tail, waitUntil } from '../lib/harness.mjs'
import { WAIT, linkBaileys, linkSession, startGateway, startHookServer } from '../lib/parties.mjs'

const WAGATE_PHONE = '15557000001'
const BAILEYS_PHONE = '15557000002'

const s = {}

// The simulator's media host speaks HTTPS with a self-signed certificate (clients build
// https:// media URLs). Baileys is told to accept it; this process talks to nothing else.
process.env.NODE_TLS_REJECT_UNAUTHORIZED = '0'

const sha256 = bytes => createHash('sha256').update(bytes).digest('hex')
// A 2 MB "invoice": a PDF header and random bytes (WhatsApp does not look inside).
const PDF = Buffer.concat([Buffer.from('%PDF-1.4\n'), randomBytes(2 * 1024 * 1024 - 9)])
const PHOTO = Buffer.concat([Buffer.from('89504e470d0a1a0a', 'hex'), randomBytes(40000)])

function context () {
  const problems = (s.baileys?.log.entries ?? []).filter(e => e.level === 'warn' || e.level === 'error').map(formatEntry)
  return tail(problems, 15, '\nBaileys warnings/errors:') + tail(s.gateway?.logs ?? [], 25, '\nwagate output:') +
    (s.sim ? tail(s.sim.output, 15, '\nsimulator output:') : '')
}

/** The messages.upsert webhook of the message Baileys sent as `sent`. */
function upsertOf (sent, what) {
  return waitUntil(() => s.hook.hooks.find(h => h.event === 'messages.upsert' && h.data.id === sent.key.id), WAIT, what)
}

/** What wagate's download endpoint serves for a received message. */
async function downloadFromWagate (upsert) {
  assert.ok(upsert.data.media?.url, `no media url in ${JSON.stringify(upsert.data)}`)
  const res = await fetch(upsert.data.media.url)
  assert.equal(res.status, 200, await res.clone().text())
  return { bytes: Buffer.from(await res.arrayBuffer()), type: res.headers.get('content-type'), disposition: res.headers.get('content-disposition') }
}

function receivedBy (id, what) {
  return waitUntil(() => s.baileys.incoming.find(m => m.key.id === id), WAIT, what)
}

describe('wagate and Baileys 7 exchange messages through wagate-sim', () => {
  before(async () => {
    s.sim = await startSimulator()
    WA_CERT_DETAILS.PUBLIC_KEY = Buffer.from(s.sim.info.root_public_key, 'hex')
    s.hook = await startHookServer()
    // The data directory outlives the gateway: the offline test restarts it on the same one.
    s.dataDir = await mkdtemp(path.join(os.tmpdir(), 'wagate-interop-data-'))
    s.gateway = await startGateway(s.sim, s.hook.url, { dataDir: s.dataDir })
  })

  after(async () => {
    await s.baileys?.stop()
    await s.gateway?.stop()
    s.hook?.stop()
    await s.sim?.stop()
    await rm(s.dataDir, { recursive: true, force: true })
  })

  it('links a wagate session and a Baileys client to two phones', { timeout: 90000 }, async () => {
    try {
      await linkSession(s.gateway, s.sim, 'W', WAGATE_PHONE)
      s.baileys = await linkBaileys(s.sim, BAILEYS_PHONE)
    } catch (e) { e.message += context(); throw e }
  })

  it('wagate -> Baileys: a text arrives and its read receipt comes back as message.status', { timeout: 60000 }, async () => {
    try {
      const sent = await s.gateway.api('POST', '/v1/sessions/W/messages', { to: `+${BAILEYS_PHONE}`, text: 'hello Baileys' })
      assert.equal(sent.status, 200, JSON.stringify(sent.json))
      const message = await waitUntil(() => s.baileys.incoming.find(m => m.key.id === sent.json.id), WAIT, 'Baileys to receive the text')
      const text = message.message?.conversation ?? message.message?.extendedTextMessage?.text
      assert.equal(text, 'hello Baileys', `Baileys received: ${JSON.stringify(message).slice(0, 600)}`)
      assert.ok(message.key.remoteJid, 'a chat')
      await s.baileys.sock.readMessages([message.key])
      await waitUntil(() => s.hook.hooks.some(h => h.event === 'message.status' && h.data.id === sent.json.id && h.data.status === 'read'),
        WAIT, 'message.status read')
      const shown = await s.gateway.api('GET', `/v1/sessions/W/messages/${sent.json.id}`)
      assert.equal(shown.json.status, 'read')
    } catch (e) { e.message += context(); throw e }
  })

  it('Baileys -> wagate: a text arrives as messages.upsert with the sender', { timeout: 60000 }, async () => {
    try {
      const sent = await s.baileys.sock.sendMessage(`${WAGATE_PHONE}@s.whatsapp.net`, { text: 'hello wagate' })
      const upsert = await waitUntil(() => s.hook.hooks.find(h => h.event === 'messages.upsert' && h.data.id === sent.key.id),
        WAIT, 'the messages.upsert webhook')
      assert.equal(upsert.data.type, 'text')
      assert.equal(upsert.data.text, 'hello wagate')
      assert.equal(upsert.data.sender_phone, BAILEYS_PHONE, JSON.stringify(upsert.data))
      assert.equal(upsert.session, 'W')
    } catch (e) { e.message += context(); throw e }
  })

  it('wagate -> Baileys: a 2 MB PDF arrives and Baileys downloads it intact', { timeout: 60000 }, async () => {
    try {
      const sent = await s.gateway.api('POST', '/v1/sessions/W/messages', {
        to: BAILEYS_PHONE,
        document: { base64: PDF.toString('base64'), mimetype: 'application/pdf', filename: 'INV-0001.pdf', caption: 'Your invoice' }
      })
      assert.equal(sent.status, 200, JSON.stringify(sent.json))
      const message = await receivedBy(sent.json.id, 'Baileys to receive the document')
      const doc = message.message?.documentMessage ?? message.message?.documentWithCaptionMessage?.message?.documentMessage
      assert.ok(doc, `not a document: ${JSON.stringify(message.message).slice(0, 400)}`)
      assert.equal(doc.fileName, 'INV-0001.pdf')
      assert.equal(doc.mimetype, 'application/pdf')
      assert.equal(doc.caption, 'Your invoice')
      const bytes = await downloadMediaMessage(message, 'buffer', {})
      assert.equal(bytes.length, PDF.length)
      assert.equal(sha256(bytes), sha256(PDF), 'the PDF Baileys downloaded differs from the one sent')
    } catch (e) { e.message += context(); throw e }
  })

  it('wagate -> Baileys: an image fetched by URL arrives with its caption', { timeout: 60000 }, async () => {
    try {
      s.hook.files.set('/files/photo.png', { type: 'image/png', bytes: PHOTO })
      const sent = await s.gateway.api('POST', '/v1/sessions/W/messages', {
        to: `${BAILEYS_PHONE}@s.whatsapp.net`, image: { url: `${s.hook.base}/files/photo.png`, caption: 'the new shop' }
      })
      assert.equal(sent.status, 200, JSON.stringify(sent.json))
      const message = await receivedBy(sent.json.id, 'Baileys to receive the image')
      const image = message.message?.imageMessage
      assert.ok(image, `not an image: ${JSON.stringify(message.message).slice(0, 400)}`)
      assert.equal(image.caption, 'the new shop')
      assert.equal(image.mimetype, 'image/png', 'the type the URL was served with')
      assert.equal(sha256(await downloadMediaMessage(message, 'buffer', {})), sha256(PHOTO))
    } catch (e) { e.message += context(); throw e }
  })

  it('Baileys -> wagate: image, document, voice note, location each arrive normalised, media intact', { timeout: 90000 }, async () => {
    try {
      const to = `${WAGATE_PHONE}@s.whatsapp.net`
      const photo = randomBytes(30000)
      const sentImage = await s.baileys.sock.sendMessage(to, { image: photo, mimetype: 'image/jpeg', caption: 'damaged box', jpegThumbnail: null })
      const image = await upsertOf(sentImage, 'the image upsert')
      assert.equal(image.data.type, 'image')
      assert.equal(image.data.text, 'damaged box')
      assert.equal(image.data.media.mimetype, 'image/jpeg')
      assert.equal(image.data.media.size, photo.length)
      assert.equal(image.data.media.sha256, sha256(photo))
      assert.ok(!JSON.stringify(image.data).includes(photo.toString('base64').slice(0, 40)), 'no base64 blob in the event')
      const gotImage = await downloadFromWagate(image)
      assert.equal(sha256(gotImage.bytes), sha256(photo), 'wagate served different image bytes')
      assert.equal(gotImage.type, 'image/jpeg')

      const order = Buffer.concat([Buffer.from('%PDF-1.4\n'), randomBytes(300000)])
      const sentDoc = await s.baileys.sock.sendMessage(to, { document: order, mimetype: 'application/pdf', fileName: 'PO-77.pdf' })
      const doc = await upsertOf(sentDoc, 'the document upsert')
      assert.equal(doc.data.type, 'document')
      assert.equal(doc.data.media.filename, 'PO-77.pdf')
      const gotDoc = await downloadFromWagate(doc)
      assert.equal(sha256(gotDoc.bytes), sha256(order))
      assert.match(gotDoc.disposition ?? '', /PO-77\.pdf/)

      const voice = randomBytes(12000)
      const sentVoice = await s.baileys.sock.sendMessage(to, {
        audio: voice, mimetype: 'audio/ogg; codecs=opus', ptt: true, seconds: 3, waveform: new Uint8Array(64)
      })
      const note = await upsertOf(sentVoice, 'the voice note upsert')
      assert.equal(note.data.type, 'voice')
      assert.equal(sha256((await downloadFromWagate(note)).bytes), sha256(voice))

      const sentPlace = await s.baileys.sock.sendMessage(to, { location: { degreesLatitude: 12.9716, degreesLongitude: 77.5946, name: 'Warehouse 3' } })
      const place = await upsertOf(sentPlace, 'the location upsert')
      assert.equal(place.data.type, 'location')
      assert.deepEqual(place.data.location, { latitude: 12.9716, longitude: 77.5946, name: 'Warehouse 3' })
    } catch (e) { e.message += context(); throw e }
  })

  it('replies and reactions both ways point at the right message', { timeout: 60000 }, async () => {
    try {
      const to = `${WAGATE_PHONE}@s.whatsapp.net`
      const question = await s.baileys.sock.sendMessage(to, { text: 'is my order shipped?' })
      await upsertOf(question, 'the question upsert')

      // wagate answers it as a reply, then reacts to it.
      const reply = await s.gateway.api('POST', '/v1/sessions/W/messages', { to: BAILEYS_PHONE, text: 'yes, today', reply_to: question.key.id })
      assert.equal(reply.status, 200, JSON.stringify(reply.json))
      const replyMsg = await receivedBy(reply.json.id, 'Baileys to receive the reply')
      const context = replyMsg.message?.extendedTextMessage?.contextInfo
      assert.equal(replyMsg.message?.extendedTextMessage?.text, 'yes, today')
      assert.equal(context?.stanzaId, question.key.id, `reply context: ${JSON.stringify(context)}`)
      assert.equal(context?.quotedMessage?.conversation, 'is my order shipped?')
      const react = await s.gateway.api('POST', '/v1/sessions/W/messages', { to: BAILEYS_PHONE, reaction: { message_id: question.key.id, emoji: '👍' } })
      assert.equal(react.status, 200, JSON.stringify(react.json))
      const reaction = await receivedBy(react.json.id, 'Baileys to receive the reaction')
      assert.equal(reaction.message?.reactionMessage?.text, '👍')
      assert.equal(reaction.message?.reactionMessage?.key?.id, question.key.id)

      // Baileys quotes wagate's reply and reacts to it.
      const quoted = await s.baileys.sock.sendMessage(to, { text: 'thanks!' }, { quoted: replyMsg })
      const quotedUpsert = await upsertOf(quoted, 'the quoting upsert')
      assert.equal(quotedUpsert.data.quoted_id, reply.json.id)
      const liked = await s.baileys.sock.sendMessage(to, { react: { text: '🙏', key: replyMsg.key } })
      const likedUpsert = await upsertOf(liked, 'the reaction upsert')
      assert.equal(likedUpsert.data.type, 'reaction')
      assert.equal(likedUpsert.data.reaction, '🙏')
      assert.equal(likedUpsert.data.quoted_id, reply.json.id)

      const unknown = await s.gateway.api('POST', '/v1/sessions/W/messages', { to: BAILEYS_PHONE, text: 'x', reply_to: 'NOPE' })
      assert.equal(unknown.status, 400, JSON.stringify(unknown.json))
    } catch (e) { e.message += context(); throw e }
  })

  it('offline: three messages sent while wagate is stopped arrive once, in order, after it starts', { timeout: 90000 }, async () => {
    try {
      await s.gateway.stop()
      const to = `${WAGATE_PHONE}@s.whatsapp.net`
      const sent = []
      for (const text of ['offline one', 'offline two', 'offline three']) {
        sent.push(await s.baileys.sock.sendMessage(to, { text }))
      }
      s.gateway = await startGateway(s.sim, s.hook.url, { dataDir: s.gateway.dataDir, port: s.gateway.port })
      const ids = sent.map(m => m.key.id)
      const arrived = await waitUntil(() => {
        const hooks = s.hook.hooks.filter(h => h.event === 'messages.upsert' && ids.includes(h.data.id))
        return hooks.length >= 3 && hooks
      }, WAIT, 'the three offline messages')
      assert.deepEqual(arrived.map(h => h.data.text), ['offline one', 'offline two', 'offline three'])
      // Give a duplicate every chance to show up before counting.
      await waitUntil(async () => (await s.gateway.api('GET', '/v1/sessions/W')).json?.state === 'connected', WAIT, 'wagate connected again')
      const again = await s.baileys.sock.sendMessage(to, { text: 'back online' })
      await upsertOf(again, 'a live message after the offline ones')
      assert.equal(s.hook.hooks.filter(h => h.event === 'messages.upsert' && ids.includes(h.data.id)).length, 3, 'each exactly once')
    } catch (e) { e.message += context(); throw e }
  })
})
