// wagate <-> Baileys 7 through wagate-sim: texts both ways and a read receipt. The simulator
// relays without decrypting, so each arrival proves Signal interop between the two clients.
// Needs WAGATE_BIN (a sandbox build of `wagate`) and the simulator binary (see harness).
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import http from 'node:http'
import os from 'node:os'
import path from 'node:path'
import makeWASocket, { useMultiFileAuthState, WA_CERT_DETAILS } from 'baileys'
import { control, formatEntry, makeRecordingLogger, startGateway, startSimulator, tail, waitUntil } from '../lib/harness.mjs'

const WAGATE_PHONE = '15557000001'
const BAILEYS_PHONE = '15557000002'
const WAIT = 30000

const s = { hooks: [], incoming: [] }

async function api (method, route, body) {
  const res = await fetch(s.gatewayUrl + route, {
    method, headers: { 'content-type': 'application/json' }, body: body ? JSON.stringify(body) : undefined
  })
  return { status: res.status, json: await res.json().catch(() => null) }
}

function context () {
  const problems = (s.baileysLog?.entries ?? []).filter(e => e.level === 'warn' || e.level === 'error').map(formatEntry)
  return tail(problems, 15, '\nBaileys warnings/errors:') + tail(s.gateway?.logs ?? [], 25, '\nwagate output:') +
    (s.sim ? tail(s.sim.output, 15, '\nsimulator output:') : '')
}

async function linkBaileys () {
  const { state: auth, saveCreds } = await useMultiFileAuthState(s.authDir)
  const recorder = makeRecordingLogger()
  s.baileysLog = recorder
  const sock = makeWASocket({ waWebSocketUrl: s.sim.info.ws_url, auth, logger: recorder.logger, defaultQueryTimeoutMs: 10000 })
  sock.ev.on('creds.update', saveCreds)
  return sock
}

describe('wagate and Baileys 7 exchange messages through wagate-sim', () => {
  before(async () => {
    assert.ok(process.env.WAGATE_BIN, 'WAGATE_BIN must point at a sandbox build of wagate')
    s.sim = await startSimulator()
    WA_CERT_DETAILS.PUBLIC_KEY = Buffer.from(s.sim.info.root_public_key, 'hex')
    s.hookServer = http.createServer((req, res) => {
      let body = ''
      req.on('data', c => { body += c })
      req.on('end', () => { s.hooks.push(JSON.parse(body)); res.end('{}') })
    })
    await new Promise(resolve => s.hookServer.listen(0, '127.0.0.1', resolve))
    const hookUrl = `http://127.0.0.1:${s.hookServer.address().port}/hook`
    s.authDir = await mkdtemp(path.join(os.tmpdir(), 'wagate-interop-baileys-'))
    s.gateway = await startGateway({ waUrl: s.sim.info.ws_url, extraArgs: ['--webhook-url', hookUrl] })
    s.gatewayUrl = s.gateway.url
  })

  after(async () => {
    s.baileys?.end(undefined)
    await s.gateway?.stop()
    s.hookServer?.closeAllConnections()
    s.hookServer?.close()
    await s.sim?.stop()
    await rm(s.authDir, { recursive: true, force: true })
  })

  it('links a wagate session and a Baileys client to two phones', { timeout: 90000 }, async () => {
    try {
      await api('POST', '/v1/sessions', { id: 'W' })
      const view = await waitUntil(async () => {
        const { json } = await api('GET', '/v1/sessions/W')
        return json?.state === 'awaiting_scan' && json
      }, WAIT, 'the wagate QR')
      const scanned = await control(s.sim.info.control_url, 'POST', '/control/scan', { qr: view.qr, phone: WAGATE_PHONE })
      assert.equal(scanned.status, 200, scanned.text)
      await waitUntil(async () => (await api('GET', '/v1/sessions/W')).json?.state === 'connected', WAIT, 'wagate connected')

      // Baileys: QR, scan, the 515 restart with saved credentials, then open.
      let sock = await linkBaileys()
      const qr = await new Promise(resolve => sock.ev.on('connection.update', u => { if (u.qr) resolve(u.qr) }))
      const closed = new Promise(resolve => sock.ev.on('connection.update', u => { if (u.connection === 'close') resolve() }))
      const linked = await control(s.sim.info.control_url, 'POST', '/control/scan', { qr, phone: BAILEYS_PHONE })
      assert.equal(linked.status, 200, linked.text)
      await closed
      sock = await linkBaileys()
      await new Promise((resolve, reject) => sock.ev.on('connection.update', u => {
        if (u.connection === 'open') resolve()
        if (u.connection === 'close') reject(new Error('Baileys closed instead of opening'))
      }))
      sock.ev.on('messages.upsert', ({ messages }) => s.incoming.push(...messages))
      s.baileys = sock
    } catch (e) { e.message += context(); throw e }
  })

  it('wagate -> Baileys: a text arrives and its read receipt comes back as message.status', { timeout: 60000 }, async () => {
    try {
      const sent = await api('POST', '/v1/sessions/W/messages', { to: `+${BAILEYS_PHONE}`, text: 'hello Baileys' })
      assert.equal(sent.status, 200, JSON.stringify(sent.json))
      const message = await waitUntil(() => s.incoming.find(m => m.key.id === sent.json.id), WAIT, 'Baileys to receive the text')
      const text = message.message?.conversation ?? message.message?.extendedTextMessage?.text
      assert.equal(text, 'hello Baileys', `Baileys received: ${JSON.stringify(message).slice(0, 600)}`)
      assert.ok(message.key.remoteJid, 'a chat')
      await s.baileys.readMessages([message.key])
      await waitUntil(() => s.hooks.some(h => h.event === 'message.status' && h.data.id === sent.json.id && h.data.status === 'read'),
        WAIT, 'message.status read')
      const shown = await api('GET', `/v1/sessions/W/messages/${sent.json.id}`)
      assert.equal(shown.json.status, 'read')
    } catch (e) { e.message += context(); throw e }
  })

  it('Baileys -> wagate: a text arrives as messages.upsert with the sender', { timeout: 60000 }, async () => {
    try {
      const sent = await s.baileys.sendMessage(`${WAGATE_PHONE}@s.whatsapp.net`, { text: 'hello wagate' })
      const upsert = await waitUntil(() => s.hooks.find(h => h.event === 'messages.upsert' && h.data.id === sent.key.id),
        WAIT, 'the messages.upsert webhook')
      assert.equal(upsert.data.type, 'text')
      assert.equal(upsert.data.text, 'hello wagate')
      assert.equal(upsert.data.sender_phone, BAILEYS_PHONE, JSON.stringify(upsert.data))
      assert.equal(upsert.session, 'W')
    } catch (e) { e.message += context(); throw e }
  })
})
