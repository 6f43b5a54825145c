// Baileys 7 (the npm `baileys` package) links to wagate-sim as a companion device:
// QR pairing through the control API, the 515 restart, login with the saved credentials,
// keepalive pings, and a clean close. Run: `cd interop && npm ci && node --test`.
// Env: WAGATE_SIM_BIN (simulator binary), CARGO_TARGET_DIR, VERBOSE=1 (print every log line).
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import makeWASocket, { DisconnectReason, useMultiFileAuthState, WA_CERT_DETAILS } from 'baileys'
import {
  control, formatEntry, makeIqTracker, makeRecordingLogger, simBinaryPath, sleep, startSimulator, tail, waitUntil, withTimeout
} from '../lib/harness.mjs'

const PHONE = '15551234567'
const KEEPALIVE_MS = 1500
const QR_PREFIX = 'https://wa.me/settings/linked_devices#'

// Warnings that mean Baileys gave up on something it needed from the server.
const BAD_WARNINGS = [
  'timed out waiting for message',
  'failed to send initial passive iq',
  'failed to run digest after login',
  'keep alive called when WS not open'
]

const state = {
  failed: false,
  sim: null,
  authDir: null,
  phase: 'setup',
  sockets: [],
  log: makeRecordingLogger(),
  iqs: makeIqTracker(),
  updates: [], // every connection.update, with the phase it arrived in
  qr: null,
  scan: null,
  openAt: null
}
state.log.onEntry(e => state.iqs.onLogEntry(e, state.phase))

/** The last stanzas and every warning/error Baileys logged, for failure messages. */
function context (nStanzas = 25) {
  const stanzas = state.log.entries
    .filter(e => e.msg === 'xml send' || e.msg === 'recv xml')
    .map(e => (e.msg === 'xml send' ? '>> ' : '<< ') + formatEntry(e).replace(/ (xml send|recv xml) /, ' '))
  const problems = state.log.entries.filter(e => e.level === 'warn' || e.level === 'error' || e.level === 'fatal').map(formatEntry)
  const iqs = state.iqs.all().map(state.iqs.describe)
  return tail(stanzas, nStanzas, '\nlast stanzas (>> sent by Baileys, << received):') +
    tail(problems, 15, '\nBaileys warnings/errors:') +
    tail(iqs, 30, '\niqs sent by Baileys:') +
    (state.sim ? tail(state.sim.output, 15, '\nsimulator output:') : '')
}

/**
 * Runs one step; after the first failure of a blocking step the remaining steps are skipped
 * (a non-blocking step only checks and leaves the connection usable for the next steps).
 */
function step (name, timeoutMs, fn, { blocking = true } = {}) {
  it(name, { timeout: timeoutMs + 5000 }, async t => {
    if (state.failed) { t.skip('an earlier step failed'); return }
    try {
      await withTimeout(Promise.resolve().then(() => fn(t)), timeoutMs, name)
    } catch (e) {
      if (blocking) state.failed = true
      e.message += context()
      throw e
    }
  })
}

/** Creates a Baileys socket on the simulator with the auth state in state.authDir. */
async function connect () {
  const { state: auth, saveCreds } = await useMultiFileAuthState(state.authDir)
  const pendingSaves = []
  const sock = makeWASocket({
    waWebSocketUrl: state.sim.info.ws_url,
    auth,
    logger: state.log.logger,
    keepAliveIntervalMs: KEEPALIVE_MS,
    connectTimeoutMs: 15000,
    defaultQueryTimeoutMs: 10000,
    markOnlineOnConnect: true
  })
  const rec = { sock, auth, pendingSaves, updates: [], closed: null }
  sock.ev.on('creds.update', () => { pendingSaves.push(saveCreds()) })
  sock.ev.on('connection.update', u => {
    rec.updates.push(u)
    state.updates.push({ phase: state.phase, ...u })
    if (u.connection === 'close') {
      const err = u.lastDisconnect?.error
      rec.closed = { statusCode: err?.output?.statusCode, message: err?.message, error: err }
    }
  })
  sock.ws.on('frame', frame => state.iqs.onFrame(frame))
  state.sockets.push(rec)
  return rec
}

/** Resolves when pred(update) holds for a connection.update of rec; rejects on an unexpected close. */
function waitForUpdate (rec, pred, what, { allowClose = false } = {}) {
  return new Promise((resolve, reject) => {
    const check = u => {
      if (pred(u)) { resolve(u); return true }
      if (u.connection === 'close' && !allowClose) {
        const err = u.lastDisconnect?.error
        reject(new Error(`connection closed while waiting for ${what}: status ${err?.output?.statusCode} (${err?.message})`))
        return true
      }
      return false
    }
    for (const u of rec.updates) if (check(u)) return
    rec.sock.ev.on('connection.update', u => { check(u) })
  })
}

/**
 * Waits until `count` keepalive pings that rec's socket sent after `since` were answered with
 * type=result; fails on a close, an error answer, or a ping left unanswered for 3 s.
 */
async function waitForAnsweredPings (rec, since, count) {
  for (;;) {
    if (rec.closed) throw new Error(`connection closed during keepalive: ${rec.closed.statusCode} (${rec.closed.message})`)
    const pings = state.iqs.pings().filter(p => p.sentAt >= since && p.phase === state.phase)
    const bad = pings.filter(p => p.answer && p.answer.type !== 'result')
    if (bad.length) throw new Error(`ping answered with non-result: ${bad.map(state.iqs.describe).join('; ')}`)
    const late = pings.filter(p => !p.answer && Date.now() - p.sentAt > 3000)
    if (late.length) throw new Error(`ping not answered: ${late.map(state.iqs.describe).join('; ')}`)
    const ok = pings.filter(p => p.answer?.type === 'result')
    if (ok.length >= count) return ok
    await sleep(100)
  }
}

describe('Baileys 7.0.0-rc14 links to wagate-sim', () => {
  before(async () => {
    state.authDir = await mkdtemp(path.join(os.tmpdir(), 'wagate-interop-auth-'))
  })

  after(async () => {
    for (const { sock, closed } of state.sockets) {
      if (!closed) { try { await sock.end(undefined) } catch {} }
    }
    if (state.sim) await state.sim.stop()
    if (state.authDir) await rm(state.authDir, { recursive: true, force: true })
    // Baileys may leave caches/timers behind; do not let them keep the test process alive.
    setTimeout(() => process.exit(), 3000).unref()
  })

  step('the simulator starts and prints its ready line', 20000, async t => {
    t.diagnostic(`simulator binary: ${simBinaryPath()}`)
    state.sim = await startSimulator()
    const { ws_url: wsUrl, control_url: controlUrl, root_public_key: root } = state.sim.info
    t.diagnostic(`ready: ${JSON.stringify(state.sim.info)}`)
    assert.match(wsUrl, /^ws:\/\/127\.0\.0\.1:\d+\/ws\/chat$/)
    assert.match(controlUrl, /^http:\/\/127\.0\.0\.1:\d+$/)
    // Baileys checks the intermediate certificate against this key (and its issuer serial against SERIAL = 0).
    WA_CERT_DETAILS.PUBLIC_KEY = Buffer.from(root, 'hex')
  })

  step('Baileys completes the Noise handshake and shows a QR code', 15000, async t => {
    state.phase = 'pairing'
    const rec = await connect()
    const u = await waitForUpdate(rec, x => typeof x.qr === 'string' && x.qr.length > 0, 'a QR code')
    state.qr = u.qr
    t.diagnostic(`QR: ${u.qr.slice(0, 60)}...`)
    assert.ok(u.qr.startsWith(QR_PREFIX), `QR has the ${QR_PREFIX} prefix`)
    const parts = u.qr.slice(QR_PREFIX.length).split(',')
    assert.equal(parts.length, 5, 'QR body is ref,noiseKey,identityKey,advSecret,platform')
  })

  step('keepalive pings are answered while the QR is shown (before pairing)', 10000, async t => {
    const ok = await waitForAnsweredPings(state.sockets[0], 0, 2)
    t.diagnostic(`pings: ${ok.map(state.iqs.describe).join('; ')}`)
  })

  step('scanning the QR pairs the device and the simulator asks for a restart (515)', 20000, async t => {
    const rec = state.sockets[0]
    const closed = waitForUpdate(rec, x => x.connection === 'close', 'the 515 close', { allowClose: true })
    const res = await control(state.sim.info.control_url, 'POST', '/control/scan', { qr: state.qr, phone: PHONE })
    assert.equal(res.status, 200, `POST /control/scan answered ${res.status}: ${res.text}`)
    assert.equal(typeof res.json?.jid, 'string', `scan answer has a jid: ${res.text}`)
    assert.equal(typeof res.json?.lid, 'string', `scan answer has a lid: ${res.text}`)
    state.scan = res.json
    t.diagnostic(`scan: ${res.text}`)
    const u = await closed
    const code = u.lastDisconnect?.error?.output?.statusCode
    assert.equal(code, DisconnectReason.restartRequired,
      `expected close with 515 (restartRequired), got ${code} (${u.lastDisconnect?.error?.message})`)
    const signed = state.log.entries.some(e => e.msg === 'xml send' && /pair-device-sign/.test(e.obj?.xml ?? ''))
    assert.ok(signed, 'Baileys sent <pair-device-sign>')
    await Promise.all(rec.pendingSaves)
    const me = rec.auth.creds.me
    assert.ok(me?.id, 'pairing stored creds.me')
    t.diagnostic(`creds.me after pairing: ${JSON.stringify(me)}, platform ${rec.auth.creds.platform}`)
    assert.equal(me.id.split(/[:@]/)[0], PHONE, 'paired account is the scanned phone number')
    assert.equal(me.id.split(/[:@]/)[0], state.scan.jid.split(/[:@]/)[0], 'scan jid matches Baileys creds.me.id')
    if (me.lid) assert.equal(me.lid.split(/[:@]/)[0], state.scan.lid.split(/[:@]/)[0], 'scan lid matches Baileys creds.me.lid')
  })

  step('reconnecting with the saved credentials logs in (connection: open)', 25000, async t => {
    state.phase = 'login'
    const rec = await connect() // loads the credentials back from disk
    assert.ok(rec.auth.creds.me?.id, 'credentials on disk are registered')
    await waitForUpdate(rec, x => x.connection === 'open', "connection: 'open'")
    state.openAt = Date.now()
    t.diagnostic(`open; creds.me = ${JSON.stringify(rec.auth.creds.me)}`)
  })

  step('keepalive pings are answered while the connection stays open', 15000, async t => {
    const ok = await waitForAnsweredPings(state.sockets[1], state.openAt, 2)
    t.diagnostic(`pings: ${ok.map(state.iqs.describe).join('; ')}`)
  })

  step('every iq Baileys sent was answered and Baileys reported no problem', 10000, async t => {
    // every iq sent so far gets its answer (an iq still open after 3 s counts as unanswered)
    await waitUntil(() => state.iqs.unanswered(0).length === 0, 3000, 'answers to every iq').catch(() => {})
    const rec = state.sockets[1]
    assert.equal(rec.closed, null, 'connection still open')
    const unanswered = state.iqs.unanswered(0)
    const errors = state.iqs.errors()
    for (const r of state.iqs.all().filter(r => !(r.xmlns === 'w:p'))) t.diagnostic(state.iqs.describe(r))
    if (errors.length) t.diagnostic(`iqs answered with type=error: ${errors.map(state.iqs.describe).join('; ')}`)
    const problems = state.log.entries
      .filter(e => (e.level === 'error' || e.level === 'fatal' || (e.level === 'warn' && BAD_WARNINGS.some(w => e.msg.includes(w)))))
      // the 515 stream:error is logged at error level and expected
      .filter(e => !(e.msg === 'stream errored out' && e.obj?.fullErrorNode?.attrs?.code === '515'))
      .map(formatEntry)
    const gotOffline = state.updates.some(u => u.phase === 'login' && u.receivedPendingNotifications === true)
    t.diagnostic(`<ib><offline> received (receivedPendingNotifications): ${gotOffline}`)
    assert.deepEqual(unanswered.map(state.iqs.describe), [], 'iqs Baileys sent that got no answer')
    assert.deepEqual(problems, [], 'errors/warnings Baileys logged')
  }, { blocking: false })

  step("the simulator's control API reports the device", 10000, async t => {
    const base = state.sim.info.control_url
    const user = state.scan.jid.split(/[:@]/)[0]
    const stats = await control(base, 'GET', '/control/stats')
    assert.equal(stats.status, 200, `GET /control/stats: ${stats.status} ${stats.text}`)
    t.diagnostic(`stats: ${stats.text.slice(0, 800)}`)
    const devices = stats.json?.devices ?? {}
    const key = Object.keys(devices).find(k => k === state.scan.jid) ?? Object.keys(devices).find(k => k.split(/[:@]/)[0] === user)
    assert.ok(key, `stats.devices has an entry for ${state.scan.jid}`)
    const d = devices[key]
    for (const [field, min] of [['pairings', 1], ['logins', 1], ['connections', 2], ['handshakes', 2]]) {
      if (typeof d[field] === 'number') assert.ok(d[field] >= min, `stats.devices[${key}].${field} = ${d[field]}, expected >= ${min}`)
      else t.diagnostic(`stats.devices[${key}] has no numeric ${field}`)
    }
    const list = await control(base, 'GET', '/control/devices')
    assert.equal(list.status, 200, `GET /control/devices: ${list.status} ${list.text}`)
    t.diagnostic(`devices: ${list.text.slice(0, 400)}`)
    const dev = Array.isArray(list.json) ? list.json.find(x => x.jid === state.scan.jid || x.jid?.split(/[:@]/)[0] === user) : undefined
    assert.ok(dev, `/control/devices lists ${state.scan.jid}`)
    assert.equal(dev.connected, true, 'device is connected')
    // iqs the simulator had no handler for (it still answered them with an empty result)
    const unknown = await control(base, 'GET', '/control/unknown-iqs')
    assert.equal(unknown.status, 200, `GET /control/unknown-iqs: ${unknown.status} ${unknown.text}`)
    assert.deepEqual(unknown.json, [], 'every iq Baileys sent had a handler in the simulator')
  })

  step('closing the connection is clean and the simulator stops on SIGTERM', 15000, async t => {
    const rec = state.sockets[1]
    const closed = waitForUpdate(rec, x => x.connection === 'close', 'the close', { allowClose: true })
    await rec.sock.end(undefined)
    const u = await closed
    assert.equal(u.lastDisconnect?.error, undefined, `close carries no error (got ${u.lastDisconnect?.error?.message})`)
    const list = await waitUntil(async () => {
      const l = await control(state.sim.info.control_url, 'GET', '/control/devices')
      return Array.isArray(l.json) && l.json.every(d => d.connected === false) && l
    }, 5000, 'the simulator to see the device disconnected')
    t.diagnostic(`devices after close: ${list.text?.slice(0, 300)}`)
    const exit = await state.sim.stop()
    t.diagnostic(`simulator exit: ${JSON.stringify(exit)}`)
    assert.ok(!exit.forced, 'simulator exited within 5 s of SIGTERM')
    assert.ok(exit.code === 0 || exit.signal === 'SIGTERM', `simulator exit ${JSON.stringify(exit)}`)
  })
})
