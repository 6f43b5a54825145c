// The parties of a wagate <-> Baileys test: a wagate gateway (child process) with a webhook
// receiver, and Baileys clients linked to simulated phones.
import { mkdtemp, rm } from 'node:fs/promises'
import http from 'node:http'
import os from 'node:os'
import path from 'node:path'
import makeWASocket, { useMultiFileAuthState } from 'baileys'
import { control, formatEntry, makeRecordingLogger, startGateway as startWagate, tail, waitUntil } from './harness.mjs'

export const WAIT = 30000

/**
 * A webhook receiver that keeps every body it gets, in order. It also serves the files put
 * in `files` (path -> {type, bytes}), for sends by URL.
 */
export async function startHookServer () {
  const hooks = []
  const files = new Map()
  const server = http.createServer((req, res) => {
    const file = files.get(req.url)
    if (req.method === 'GET' && file) {
      res.writeHead(200, { 'content-type': file.type, 'content-length': file.bytes.length })
      return res.end(file.bytes)
    }
    let body = ''
    req.on('data', c => { body += c })
    req.on('end', () => { hooks.push(JSON.parse(body)); res.end('{}') })
  })
  await new Promise(resolve => server.listen(0, '127.0.0.1', resolve))
  const stop = () => { server.closeAllConnections(); server.close() }
  const base = `http://127.0.0.1:${server.address().port}`
  return { hooks, files, base, url: `${base}/hook`, stop }
}

/**
 * `wagate serve` (WAGATE_BIN) against the simulator, sending every event to `hookUrl`;
 * `keep` ({dataDir, port}) restarts a stopped gateway on its data.
 */
export function startGateway (sim, hookUrl, keep = {}) {
  return startWagate({ waUrl: sim.info.ws_url, extraArgs: ['--webhook-url', hookUrl], ...keep })
}

/** Creates wagate session `id` and links it to `phone` by scanning its QR. */
export async function linkSession (gateway, sim, id, phone) {
  await gateway.api('POST', '/v1/sessions', { id })
  const view = await waitUntil(async () => {
    const { json } = await gateway.api('GET', `/v1/sessions/${id}`)
    return json?.state === 'awaiting_scan' && json
  }, WAIT, `the QR of session ${id}`)
  const scanned = await control(sim.info.control_url, 'POST', '/control/scan', { qr: view.qr, phone })
  if (scanned.status !== 200) throw new Error(`scan for ${id}: ${scanned.text}`)
  await waitUntil(async () => (await gateway.api('GET', `/v1/sessions/${id}`)).json?.state === 'connected',
    WAIT, `session ${id} connected`)
}

/**
 * A Baileys client linked to `phone`: QR, scan, the 515 restart with saved credentials, open.
 * `watch(sock)`, if given, is called as soon as the logged-in socket exists, so it sees every
 * event of the first login; `socketOptions` go to makeWASocket. Returns { sock, log (recording logger), incoming (messages.upsert
 * messages), stop }.
 */
export async function linkBaileys (sim, phone, { watch, socketOptions = {} } = {}) {
  const authDir = await mkdtemp(path.join(os.tmpdir(), 'wagate-interop-baileys-'))
  const open = async () => {
    const { state: auth, saveCreds } = await useMultiFileAuthState(authDir)
    const log = makeRecordingLogger()
    const sock = makeWASocket({ waWebSocketUrl: sim.info.ws_url, auth, logger: log.logger, defaultQueryTimeoutMs: 10000, ...socketOptions })
    sock.ev.on('creds.update', saveCreds)
    return { sock, log }
  }
  const first = await open()
  const qr = await new Promise(resolve => first.sock.ev.on('connection.update', u => { if (u.qr) resolve(u.qr) }))
  const closed = new Promise(resolve => first.sock.ev.on('connection.update', u => { if (u.connection === 'close') resolve() }))
  const linked = await control(sim.info.control_url, 'POST', '/control/scan', { qr, phone })
  if (linked.status !== 200) throw new Error(`scan for Baileys ${phone}: ${linked.text}`)
  await closed
  const { sock, log } = await open()
  watch?.(sock)
  await new Promise((resolve, reject) => sock.ev.on('connection.update', u => {
    if (u.connection === 'open') resolve()
    if (u.connection === 'close') reject(new Error(`Baileys ${phone} closed instead of opening`))
  }))
  const incoming = []
  sock.ev.on('messages.upsert', ({ messages }) => incoming.push(...messages))
  const stop = async () => {
    sock.end(undefined)
    await rm(authDir, { recursive: true, force: true })
  }
  return { sock, log, incoming, stop, phone }
}

/** What a failed test shows of its parties: Baileys' warnings, wagate's and the simulator's output. */
export function failureContext ({ baileys, gateway, sim }) {
  const problems = (baileys?.log.entries ?? []).filter(e => e.level === 'warn' || e.level === 'error').map(formatEntry)
  return tail(problems, 15, '\nBaileys warnings/errors:') + tail(gateway?.logs ?? [], 25, '\nwagate output:') +
    (sim ? tail(sim.output, 15, '\nsimulator output:') : '')
}
