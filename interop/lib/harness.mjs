// Helpers for the interop and console tests: start/stop the simulator and a gateway, a
// recording pino-compatible logger, and bookkeeping of the iqs Baileys sends.
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
export const interopDir = path.resolve(here, '..')
const repoRoot = path.resolve(interopDir, '..')

/** Where the simulator binary is: WAGATE_SIM_BIN, else $CARGO_TARGET_DIR/debug, else ../target/debug. */
export function simBinaryPath () {
  if (process.env.WAGATE_SIM_BIN) return path.resolve(interopDir, process.env.WAGATE_SIM_BIN)
  if (process.env.CARGO_TARGET_DIR) return path.resolve(repoRoot, process.env.CARGO_TARGET_DIR, 'debug', 'wagate-sim')
  return path.resolve(interopDir, '..', 'target', 'debug', 'wagate-sim')
}

/** Races a promise against a timer; the error names the step that did not finish. */
export function withTimeout (promise, ms, what) {
  let timer
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

export const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

/** Polls `check` every 50 ms until it returns a truthy value; throws after `ms`. */
export async function waitUntil (check, ms, what) {
  const deadline = Date.now() + ms
  for (;;) {
    const value = await check()
    if (value) return value
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await sleep(50)
  }
}

/**
 * Starts `wagate-sim --listen 127.0.0.1:0` and resolves with its ready line
 * ({ws_url, control_url, root_public_key}) plus a stop() function.
 */
export async function startSimulator ({ bin = simBinaryPath(), readyTimeoutMs = 20000, extraArgs = [] } = {}) {
  if (!existsSync(bin)) {
    throw new Error(`simulator binary not found at ${bin}; build it with ` +
      '`cargo build -p wagate-sim --bin wagate-sim` or point WAGATE_SIM_BIN / CARGO_TARGET_DIR at it')
  }
  const child = spawn(bin, ['--listen', '127.0.0.1:0', ...extraArgs], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { RUST_LOG: 'info', ...process.env }
  })
  const output = [] // every line the simulator printed, stdout and stderr, for diagnostics
  let exited = null
  const exitPromise = new Promise(resolve => {
    child.on('exit', (code, signal) => { exited = { code, signal }; resolve(exited) })
  })
  const killOnExit = () => { if (!exited) child.kill('SIGKILL') }
  process.on('exit', killOnExit)

  const collect = (stream, name, onLine) => {
    let partial = ''
    stream.setEncoding('utf8')
    stream.on('data', chunk => {
      partial += chunk
      let nl
      while ((nl = partial.indexOf('\n')) >= 0) {
        const line = partial.slice(0, nl).replace(/\x1b\[[0-9;]*m/g, '') // drop colour codes
        partial = partial.slice(nl + 1)
        output.push(`[sim ${name}] ${line}`)
        if (output.length > 4000) output.splice(0, output.length - 4000)
        if (process.env.VERBOSE) process.stderr.write(`[sim ${name}] ${line}\n`)
        onLine?.(line)
      }
    })
  }

  const ready = new Promise((resolve, reject) => {
    let gotReady = false
    collect(child.stdout, 'out', line => {
      if (gotReady) return
      gotReady = true
      try {
        const info = JSON.parse(line)
        for (const k of ['ws_url', 'control_url', 'root_public_key']) {
          if (typeof info[k] !== 'string') throw new Error(`ready line lacks string field "${k}"`)
        }
        if (!/^[0-9a-fA-F]{64}$/.test(info.root_public_key)) throw new Error('root_public_key is not 64 hex digits')
        resolve(info)
      } catch (e) {
        reject(new Error(`simulator's first stdout line is not the expected JSON (${e.message}): ${line}`))
      }
    })
    collect(child.stderr, 'err')
    child.on('error', e => reject(new Error(`cannot start simulator ${bin}: ${e.message}`)))
    exitPromise.then(x => reject(new Error(`simulator exited before printing its ready line (${JSON.stringify(x)})`)))
  })

  const stop = async () => {
    process.off('exit', killOnExit)
    if (exited) return exited
    child.kill('SIGTERM')
    const res = await Promise.race([exitPromise, sleep(5000).then(() => null)])
    if (res) return res
    child.kill('SIGKILL')
    return { ...(await exitPromise), forced: true }
  }

  try {
    const info = await withTimeout(ready, readyTimeoutMs, 'simulator ready line on stdout')
    return { info, child, output, stop, get exited () { return exited } }
  } catch (e) {
    await stop()
    e.message += tail(output, 20, '\nsimulator output:')
    throw e
  }
}

/** A free TCP port on 127.0.0.1. */
export function freePort () {
  return new Promise(resolve => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

/**
 * Starts `$WAGATE_BIN serve` on a free port of 127.0.0.1 with a fresh data directory, talking
 * to the simulator at `waUrl`; resolves once /health answers. stop() ends it (SIGTERM) and
 * removes the data directory.
 */
export async function startGateway ({ waUrl, extraArgs = [], bin = process.env.WAGATE_BIN, readyTimeoutMs = 30000, dataDir: keptDir, port: keptPort, env = {} }) {
  if (!bin) throw new Error('WAGATE_BIN must point at a sandbox build of wagate')
  // A restart passes the data directory (and port) of the gateway it replaces; that
  // directory is then the caller's to remove.
  const dataDir = keptDir ?? await mkdtemp(path.join(os.tmpdir(), 'wagate-interop-data-'))
  const port = keptPort ?? await freePort()
  const url = `http://127.0.0.1:${port}`
  const child = spawn(bin, ['serve', '--listen', `127.0.0.1:${port}`, '--data-dir', dataDir,
    '--log-file', path.join(dataDir, 'wagate.log'), '--wa-url', waUrl, ...extraArgs],
  { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } })
  const logs = [] // what wagate printed, for diagnostics
  for (const stream of [child.stdout, child.stderr]) {
    stream.setEncoding('utf8')
    stream.on('data', chunk => logs.push(...chunk.split('\n').filter(Boolean)))
  }
  const exited = new Promise(resolve => child.once('exit', resolve))
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
    await exited
    if (!keptDir) await rm(dataDir, { recursive: true, force: true })
  }
  const api = async (method, route, body) => {
    const res = await fetch(url + route, {
      method, headers: { 'content-type': 'application/json' }, body: body ? JSON.stringify(body) : undefined
    })
    return { status: res.status, json: await res.json().catch(() => null) }
  }
  try {
    await waitUntil(() => fetch(url + '/health').then(r => r.ok, () => false), readyTimeoutMs, 'wagate to listen')
  } catch (e) {
    await stop()
    e.message += tail(logs, 20, '\nwagate output:')
    throw e
  }
  return { url, port, dataDir, child, logs, api, stop }
}

/**
 * Starts `$WAGATE_BIN sandbox` (simulator, simulated contact and gateway in one process) on a
 * free port of 127.0.0.1 with a fresh data directory; resolves once /health answers.
 * stop() ends it (SIGTERM) and removes the data directory.
 */
export async function startSandbox ({ bin = process.env.WAGATE_BIN, extraArgs = [], readyTimeoutMs = 60000 } = {}) {
  if (!bin) throw new Error('WAGATE_BIN must point at a sandbox build of wagate')
  const root = await mkdtemp(path.join(os.tmpdir(), 'wagate-sandbox-'))
  const dataDir = path.join(root, 'sandbox-data')
  const port = await freePort()
  const url = `http://127.0.0.1:${port}`
  const child = spawn(bin, ['sandbox', '--listen', `127.0.0.1:${port}`, '--data-dir', dataDir, ...extraArgs],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, WAGATE_LOG: 'info' } })
  const logs = [] // the banner and the log lines, for diagnostics
  for (const stream of [child.stdout, child.stderr]) {
    stream.setEncoding('utf8')
    stream.on('data', chunk => logs.push(...chunk.split('\n').filter(Boolean)))
  }
  const exited = new Promise(resolve => child.once('exit', (code, signal) => resolve({ code, signal })))
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
    const result = await exited
    await rm(root, { recursive: true, force: true })
    return result
  }
  try {
    await waitUntil(() => fetch(url + '/health').then(r => r.ok, () => false), readyTimeoutMs, 'wagate sandbox to listen')
  } catch (e) {
    await stop()
    e.message += tail(logs, 20, '\nwagate sandbox output:')
    throw e
  }
  return { url, port, dataDir, child, logs, stop }
}

/** Formats the last n lines of a list for an error message. */
export function tail (lines, n, title) {
  if (!lines.length) return ''
  return `${title}\n  ${lines.slice(-n).join('\n  ')}`
}

const LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal']

/**
 * A pino-compatible logger (the subset Baileys uses: level, child, trace..fatal) that keeps
 * every entry in memory. Its level is 'trace' so that Baileys logs each stanza it sends
 * ("xml send") and receives ("recv xml"). VERBOSE=1 also prints the entries.
 */
export function makeRecordingLogger () {
  const entries = []
  const listeners = []
  const make = bindings => {
    const logger = {
      level: 'trace',
      child: extra => make({ ...bindings, ...extra }),
      isLevelEnabled: () => true
    }
    for (const level of LEVELS) {
      logger[level] = (a, b) => {
        let obj = {}
        let msg
        if (typeof a === 'string') msg = a
        else { obj = a || {}; msg = typeof b === 'string' ? b : obj.msg }
        const entry = { t: Date.now(), level, msg: msg ?? '', obj, bindings }
        entries.push(entry)
        for (const l of listeners) l(entry)
        if (process.env.VERBOSE) process.stderr.write(formatEntry(entry) + '\n')
      }
    }
    return logger
  }
  return { logger: make({}), entries, onEntry: fn => listeners.push(fn) }
}

export function formatEntry (e) {
  const time = new Date(e.t).toISOString().slice(11, 23)
  let text = e.msg
  if (e.obj && typeof e.obj.xml === 'string') text += ' ' + e.obj.xml.replace(/\s*\n\s*/g, '').slice(0, 400)
  else {
    const extra = Object.fromEntries(Object.entries(e.obj || {}).filter(([k]) => k !== 'msg'))
    if (Object.keys(extra).length) {
      let s
      try { s = JSON.stringify(extra, (k, v) => (v instanceof Error ? v.stack || v.message : v)) } catch { s = String(extra) }
      text += ' ' + s.slice(0, 600)
    }
  }
  return `${time} ${e.level.toUpperCase().padEnd(5)} ${text}`
}

/** Attributes of the opening tag of a stanza rendered by Baileys' binaryNodeToString. */
export function parseOpeningTag (xml) {
  const m = /^<([^\s/>]+)([^>]*?)\/?>/.exec(xml)
  if (!m) return null
  const attrs = {}
  for (const a of m[2].matchAll(/([\w:-]+)='([^']*)'/g)) attrs[a[1]] = a[2]
  const rest = xml.slice(m[0].length)
  const child = /^\s*<([^\s/>]+)/.exec(rest)
  return { tag: m[1], attrs, firstChild: child ? child[1] : undefined }
}

/**
 * Tracks the iqs of type get/set that Baileys sends and the answers (same id) it receives.
 * Feed it the recording logger's entries (sent stanzas) and the socket's decoded frames.
 */
export function makeIqTracker () {
  const sent = new Map() // id -> { id, xmlns, child, sentAt, answer?: {type, at, firstChild} }
  const order = []
  const onLogEntry = (entry, phase) => {
    if (entry.msg !== 'xml send' || typeof entry.obj?.xml !== 'string') return
    const node = parseOpeningTag(entry.obj.xml)
    if (!node || node.tag !== 'iq') return
    const { id, type, xmlns } = node.attrs
    if (!id || (type !== 'get' && type !== 'set')) return
    const rec = { id, type, xmlns, child: node.firstChild, sentAt: entry.t, phase }
    sent.set(id, rec)
    order.push(rec)
  }
  const onFrame = frame => {
    if (!frame || frame instanceof Uint8Array || frame.tag !== 'iq') return
    const rec = sent.get(frame.attrs?.id)
    if (!rec || rec.answer) return
    const first = Array.isArray(frame.content) ? frame.content[0]?.tag : undefined
    rec.answer = { type: frame.attrs.type, at: Date.now(), firstChild: first }
    if (frame.attrs.type === 'error') {
      const err = Array.isArray(frame.content) ? frame.content.find(c => c.tag === 'error') : undefined
      rec.answer.error = err?.attrs
    }
  }
  const describe = r => `${r.type} xmlns=${r.xmlns} <${r.child ?? ''}> id=${r.id} (${r.phase})` +
    (r.answer ? ` -> ${r.answer.type}${r.answer.firstChild ? ' <' + r.answer.firstChild + '>' : ''}${r.answer.error ? ' ' + JSON.stringify(r.answer.error) : ''} in ${r.answer.at - r.sentAt} ms` : ' -> NO ANSWER')
  return {
    onLogEntry,
    onFrame,
    all: () => order,
    pings: () => order.filter(r => r.xmlns === 'w:p' && r.child === 'ping'),
    unanswered: (olderThanMs = 2000) => order.filter(r => !r.answer && Date.now() - r.sentAt > olderThanMs),
    errors: () => order.filter(r => r.answer?.type === 'error'),
    describe
  }
}

/** GET/POST JSON against the simulator's control API. */
export async function control (base, method, route, body, timeoutMs = 25000) {
  const res = await fetch(base.replace(/\/$/, '') + route, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs)
  })
  const text = await res.text()
  let json
  try { json = text ? JSON.parse(text) : undefined } catch { json = undefined }
  return { status: res.status, json, text }
}
