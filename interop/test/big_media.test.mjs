// A contact's very large file cannot exhaust wagate's memory or hold back later messages.
// Baileys 7 sends a 200 MB document; wagate (a sandbox build, `--media-max 300MB`) streams
// it from the simulated CDN to disk and serves it from there, while texts sent during the
// download keep arriving; the gateway's peak RSS is checked after. The same document
// relayed to a Node-format (compat) session exceeds `--compat-media-max` (16 MB): its event
// goes out at once with `media.data: null` and a reason. The same file declared as 1 KB
// (an "endless" answer for its message) fails after that 1 KB. Needs WAGATE_BIN and the
// simulator binary (see harness).
import { createHash, randomBytes } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { WA_CERT_DETAILS } from 'baileys'
import { control, startGateway, startSimulator, waitUntil } from '../lib/harness.mjs'
import { WAIT, failureContext, linkBaileys, linkSession, startHookServer } from '../lib/parties.mjs'

const NATIVE_PHONE = '15557200001'
const COMPAT_PHONE = '15557200002'
const BAILEYS_PHONE = '15557200003'
const SIZE = 200 * 1024 * 1024
const RSS_LIMIT_KB = 100 * 1024

const s = {}

process.env.NODE_TLS_REJECT_UNAUTHORIZED = '0'

const context = () => failureContext(s)

/** Writes `size` random bytes to a file; resolves to its SHA-256 (hex). */
async function writeRandomFile (file, size) {
  const hash = createHash('sha256')
  const out = createWriteStream(file)
  for (let left = size; left > 0;) {
    const chunk = randomBytes(Math.min(left, 4 * 1024 * 1024))
    hash.update(chunk)
    if (!out.write(chunk)) await new Promise(resolve => out.once('drain', resolve))
    left -= chunk.length
  }
  await new Promise((resolve, reject) => out.end(err => err ? reject(err) : resolve()))
  return hash.digest('hex')
}

/** The gateway's peak resident memory so far, in KB (Linux). */
async function peakRssKb (pid) {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)[1])
}

const nativeUpsert = id => s.hook.hooks.find(h => h.event === 'messages.upsert' && h.data?.id === id)
const compatUpsert = id => s.hook.hooks.find(h => h.sessionId === 'C' && h.event === 'messages.upsert' &&
  h.messages?.some(m => m.id === id))

describe('a 200 MB file from a contact', () => {
  before(async () => {
    s.dir = await mkdtemp(path.join(os.tmpdir(), 'wagate-interop-big-'))
    s.file = path.join(s.dir, 'big.bin')
    s.sha256 = await writeRandomFile(s.file, SIZE)
    s.sim = await startSimulator()
    WA_CERT_DETAILS.PUBLIC_KEY = Buffer.from(s.sim.info.root_public_key, 'hex')
    s.hook = await startHookServer()
    s.gateway = await startGateway({ waUrl: s.sim.info.ws_url, extraArgs: ['--webhook-url', s.hook.url, '--media-max', '300MB'] })
  })

  after(async () => {
    await s.baileys?.stop()
    await s.gateway?.stop()
    s.hook?.stop()
    await s.sim?.stop()
    if (s.dir) await rm(s.dir, { recursive: true, force: true })
  })

  it('links a native session, a compat session and a Baileys contact', { timeout: 120000 }, async () => {
    try {
      await linkSession(s.gateway, s.sim, 'W', NATIVE_PHONE)
      const started = await s.gateway.api('POST', '/sessions/start', { sessionId: 'C', webhookUrl: s.hook.url, webhookToken: 't' })
      assert.equal(started.status, 200, JSON.stringify(started.json))
      const view = await waitUntil(async () => {
        const { json } = await s.gateway.api('GET', '/v1/sessions/C')
        return json?.state === 'awaiting_scan' && json
      }, WAIT, 'the QR of the compat session')
      const scanned = await control(s.sim.info.control_url, 'POST', '/control/scan', { qr: view.qr, phone: COMPAT_PHONE })
      assert.equal(scanned.status, 200, scanned.text)
      await waitUntil(async () => (await s.gateway.api('GET', '/v1/sessions/C')).json?.state === 'connected', WAIT, 'C connected')
      s.baileys = await linkBaileys(s.sim, BAILEYS_PHONE)
    } catch (e) { e.message += context(); throw e }
  })

  it('streams through wagate to disk, later texts arrive meanwhile, peak RSS stays under 100 MB', { timeout: 600000 }, async () => {
    try {
      const to = `${NATIVE_PHONE}@s.whatsapp.net`
      s.sent = await s.baileys.sock.sendMessage(to, { document: { url: s.file }, mimetype: 'application/octet-stream', fileName: 'big.bin' },
        { mediaUploadTimeoutMs: 300000 })
      const upsert = await waitUntil(() => nativeUpsert(s.sent.key.id), WAIT, 'the upsert of the 200 MB document')
      assert.equal(upsert.data.media?.size, SIZE, JSON.stringify(upsert.data.media))
      const res = await fetch(upsert.data.media.url)
      assert.equal(res.status, 200, res.status === 200 ? '' : await res.text())
      assert.equal(res.headers.get('content-length'), String(SIZE))
      const hash = createHash('sha256')
      let received = 0
      let texts = null
      const textIds = []
      for await (const chunk of res.body) {
        hash.update(chunk)
        received += chunk.length
        if (texts === null) {
          // The file is on its way: the contact writes more; those must not wait for it.
          texts = (async () => {
            for (const i of [1, 2, 3]) textIds.push((await s.baileys.sock.sendMessage(to, { text: `after the file ${i}` })).key.id)
            return Promise.all(textIds.map(id => waitUntil(() => nativeUpsert(id), WAIT, `text ${id} during the download`)))
          })()
        }
      }
      const arrived = await texts
      assert.equal(arrived.length, 3)
      assert.equal(received, SIZE)
      assert.equal(hash.digest('hex'), s.sha256, 'the file came out intact')
      const peak = await peakRssKb(s.gateway.child.pid)
      console.log(`wagate's peak RSS after serving a ${SIZE / 1048576} MB download: ${(peak / 1024).toFixed(1)} MB`)
      assert.ok(peak < RSS_LIMIT_KB, `peak RSS ${peak} kB, want < ${RSS_LIMIT_KB} kB`)
    } catch (e) { e.message += context(); throw e }
  })

  it('a file larger than its message declared fails after the declared bytes', { timeout: 120000 }, async () => {
    try {
      const doc = s.sent.message.documentMessage
      const id = `3EB0${randomBytes(8).toString('hex').toUpperCase()}`
      await s.baileys.sock.relayMessage(`${NATIVE_PHONE}@s.whatsapp.net`, { documentMessage: { ...doc, fileLength: 1024 } }, { messageId: id })
      const upsert = await waitUntil(() => nativeUpsert(id), WAIT, 'the upsert of the under-declared document')
      const res = await fetch(upsert.data.media.url)
      const body = await res.json().catch(() => null)
      assert.ok(res.status >= 400, `status ${res.status}`)
      assert.equal(typeof body?.error, 'string', JSON.stringify(body))
      const peak = await peakRssKb(s.gateway.child.pid)
      assert.ok(peak < RSS_LIMIT_KB, `peak RSS ${peak} kB`)
    } catch (e) { e.message += context(); throw e }
  })

  it('a compat webhook carries no file beyond --compat-media-max, says why, and later messages follow at once', { timeout: 120000 }, async () => {
    try {
      const to = `${COMPAT_PHONE}@s.whatsapp.net`
      const id = `3EB0${randomBytes(8).toString('hex').toUpperCase()}`
      const downloads = async () => (await control(s.sim.info.control_url, 'GET', '/control/stats')).json.media.downloads
      const before = await downloads()
      await s.baileys.sock.relayMessage(to, s.sent.message, { messageId: id })
      const after = await s.baileys.sock.sendMessage(to, { text: 'and a text after it' })
      const hook = await waitUntil(() => compatUpsert(id), WAIT, 'the compat upsert of the 200 MB document')
      const media = hook.messages.find(m => m.id === id).media
      assert.equal(media.data, null, 'no file in the webhook')
      assert.match(media.reason, /--compat-media-max/, JSON.stringify(media))
      assert.equal(media.filename, 'big.bin')
      await waitUntil(() => compatUpsert(after.key.id), WAIT, 'the text after the large file')
      assert.equal(await downloads(), before, 'the file was not fetched at all')
    } catch (e) { e.message += context(); throw e }
  })
})
