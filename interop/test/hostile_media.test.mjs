// A contact cannot make wagate connect to a host of its choosing. Baileys 7 relays hand-built
// document messages whose directPath would move the download URL to a local listener
// (`https://{media host}{directPath}` -> `https://mmg...@127.0.0.1:PORT/x`). Each message
// still arrives as messages.upsert, but fetching its file is refused (422, a JSON
// error) and the listener never sees a connection. Needs WAGATE_BIN (a sandbox build of
// `wagate`) and the simulator binary (see harness).
import { randomBytes } from 'node:crypto'
import net from 'node:net'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { WA_CERT_DETAILS } from 'baileys'
import { sleep, startSimulator, waitUntil } from '../lib/harness.mjs'
import { WAIT, failureContext, linkBaileys, linkSession, startGateway, startHookServer } from '../lib/parties.mjs'

const WAGATE_PHONE = '15557100001'
const BAILEYS_PHONE = '15557100002'

const s = {}

process.env.NODE_TLS_REJECT_UNAUTHORIZED = '0'

const context = () => failureContext(s)

/** A TCP listener that records every connection made to it (and closes it at once). */
async function startTrap () {
  const seen = []
  const server = net.createServer(socket => {
    seen.push({ from: `${socket.remoteAddress}:${socket.remotePort}`, at: new Date().toISOString() })
    socket.destroy()
  })
  await new Promise(resolve => server.listen(0, '127.0.0.1', resolve))
  return { seen, port: server.address().port, stop: () => server.close() }
}

describe('a received directPath cannot point wagate at another host', () => {
  before(async () => {
    s.sim = await startSimulator()
    WA_CERT_DETAILS.PUBLIC_KEY = Buffer.from(s.sim.info.root_public_key, 'hex')
    s.hook = await startHookServer()
    s.gateway = await startGateway(s.sim, s.hook.url)
    s.trap = await startTrap()
  })

  after(async () => {
    await s.baileys?.stop()
    await s.gateway?.stop()
    s.hook?.stop()
    s.trap?.stop()
    await s.sim?.stop()
  })

  it('links a wagate session and a Baileys client', { timeout: 90000 }, async () => {
    try {
      await linkSession(s.gateway, s.sim, 'W', WAGATE_PHONE)
      s.baileys = await linkBaileys(s.sim, BAILEYS_PHONE)
    } catch (e) { e.message += context(); throw e }
  })

  it('documents with crafted directPaths arrive, but their files are refused without any connection', { timeout: 120000 }, async () => {
    try {
      const port = s.trap.port
      const problems = []
      const crafted = [`@127.0.0.1:${port}/x`, `//127.0.0.1:${port}/z`, `.x@127.0.0.1:${port}/y`]
      for (const [i, directPath] of crafted.entries()) {
        const messageId = `3EB0${randomBytes(8).toString('hex').toUpperCase()}`
        await s.baileys.sock.relayMessage(`${WAGATE_PHONE}@s.whatsapp.net`, {
          documentMessage: {
            url: `https://127.0.0.1:${port}/direct`,
            directPath,
            mediaKey: randomBytes(32),
            fileSha256: randomBytes(32),
            fileEncSha256: randomBytes(32),
            fileLength: 1234,
            mimetype: 'application/pdf',
            fileName: `trap-${i}.pdf`,
            mediaKeyTimestamp: Math.floor(Date.now() / 1000)
          }
        }, { messageId })
        const upsert = await waitUntil(() => s.hook.hooks.find(h => h.event === 'messages.upsert' && h.data.id === messageId),
          WAIT, `the messages.upsert of the document with directPath ${directPath}`)
        assert.equal(upsert.data.type, 'document', JSON.stringify(upsert.data))
        const url = upsert.data.media?.url ?? `${s.gateway.url}/v1/sessions/W/media/${messageId}`
        const before = s.trap.seen.length
        const res = await fetch(url)
        const text = await res.text()
        let body = null
        try { body = JSON.parse(text) } catch {}
        if (res.status !== 422) {
          problems.push(`directPath ${directPath}: status ${res.status} (want 422, refused before any connection): ${text}`)
        }
        if (typeof body?.error !== 'string') problems.push(`directPath ${directPath}: not a JSON error: ${text}`)
        if (s.trap.seen.length > before) {
          problems.push(`directPath ${directPath} made wagate connect to the listener (answer ${res.status}: ${text})`)
        }
      }
      // Nothing comes late either (a retry, another host).
      await sleep(1500)
      assert.deepEqual(problems, [])
      assert.deepEqual(s.trap.seen, [], 'wagate connected to the listener')
    } catch (e) { e.message += context(); throw e }
  })
})
