// Baileys 7's side of wagate's `scale` benchmark: links `--sessions` clients (default 100)
// in this one Node process to a running wagate-sim, and prints one JSON line per checkpoint
// (0, 1 and N sessions): resident memory after a garbage collection, and the link times.
// Run with `node --expose-gc` so the figures are taken after a collection.
import { mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { parseArgs } from 'node:util'
import makeWASocket, { useMultiFileAuthState } from 'baileys'
import { control, sleep } from '../lib/harness.mjs'

const { values } = parseArgs({
  options: {
    'ws-url': { type: 'string' },
    'control-url': { type: 'string' },
    sessions: { type: 'string', default: '100' },
    'phone-prefix': { type: 'string', default: '1556' }
  }
})
const wsUrl = values['ws-url']
const controlUrl = values['control-url']
const sessions = Number(values.sessions)
if (!wsUrl || !controlUrl || !(sessions > 0)) {
  console.error('usage: node --expose-gc baileys_scale.mjs --ws-url URL --control-url URL [--sessions N]')
  process.exit(2)
}

// Logs cost memory of their own; a production deployment runs Baileys at level "warn" or less.
const silent = { level: 'silent', child: () => silent, isLevelEnabled: () => false }
for (const level of ['trace', 'debug', 'info', 'warn', 'error', 'fatal']) silent[level] = () => {}

const LINKING_AT_ONCE = 8
const SETTLE_MS = 10000
const authDirs = []
const sockets = []

/** QR, scan, the 515 restart with the saved credentials, open: returns scan -> open in ms. */
async function link (index) {
  const authDir = await mkdtemp(path.join(os.tmpdir(), 'wagate-scale-baileys-'))
  authDirs.push(authDir)
  const open = async () => {
    const { state: auth, saveCreds } = await useMultiFileAuthState(authDir)
    const sock = makeWASocket({ waWebSocketUrl: wsUrl, auth, logger: silent, defaultQueryTimeoutMs: 30000 })
    sock.ev.on('creds.update', saveCreds)
    return sock
  }
  const first = await open()
  const qr = await new Promise(resolve => first.ev.on('connection.update', u => { if (u.qr) resolve(u.qr) }))
  const closed = new Promise(resolve => first.ev.on('connection.update', u => { if (u.connection === 'close') resolve() }))
  const started = performance.now()
  const phone = `${values['phone-prefix']}${String(index).padStart(7, '0')}`
  const scanned = await control(controlUrl, 'POST', '/control/scan', { qr, phone })
  if (scanned.status !== 200) throw new Error(`scan for Baileys ${phone}: ${scanned.text}`)
  await closed
  const sock = await open()
  await new Promise((resolve, reject) => sock.ev.on('connection.update', u => {
    if (u.connection === 'open') resolve()
    if (u.connection === 'close') reject(new Error(`Baileys ${phone} closed instead of opening`))
  }))
  sockets.push(sock)
  return performance.now() - started
}

async function sample (count, baseRssMb, times) {
  await sleep(SETTLE_MS)
  global.gc?.()
  const rssMb = process.memoryUsage().rss / 1048576
  const sorted = [...times].sort((a, b) => a - b)
  const at = q => sorted.length ? sorted[Math.min(sorted.length, Math.max(1, Math.ceil(sorted.length * q))) - 1] : null
  console.log(JSON.stringify({ sessions: count, rssMb, baseRssMb: baseRssMb ?? rssMb, linkP50Ms: at(0.5), linkP99Ms: at(0.99) }))
  return rssMb
}

async function linkRange (from, to) {
  const times = []
  let next = from
  const worker = async () => {
    while (next < to) times.push(await link(next++))
  }
  await Promise.all(Array.from({ length: Math.min(LINKING_AT_ONCE, to - from) }, worker))
  return times
}

try {
  const base = await sample(0, null, [])
  let linked = 0
  for (const checkpoint of [...new Set([1, Math.min(100, sessions), sessions])]) {
    const times = await linkRange(linked, checkpoint)
    linked = checkpoint
    await sample(linked, base, times)
  }
} finally {
  for (const sock of sockets) sock.end(undefined)
  await Promise.all(authDirs.map(dir => rm(dir, { recursive: true, force: true })))
}
process.exit(0)
