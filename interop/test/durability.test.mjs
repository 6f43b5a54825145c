// Durability of received messages: Baileys 7 sends 300 texts to a wagate session while the
// gateway is killed with SIGKILL three times and stopped with SIGTERM twice, at random moments,
// and restarted each time on the same data directory and port. Every text must reach the
// webhook receiver, each message as one webhook event: a redelivery may repeat the same event
// id (the receiver may have got a POST whose answer the gateway never read), never a new id.
// A gateway that acks WhatsApp before the event is on disk loses the messages a kill catches
// between the two, so this test fails without that guarantee.
//
// The interruptions are drawn from a seeded PRNG; the seed is printed, and
// WAGATE_DURABILITY_SEED=<seed> replays the same plan (the timing of the processes still
// varies). Needs WAGATE_BIN (a sandbox build of `wagate`) and the simulator binary (see harness).
import { randomInt } from 'node:crypto'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import http from 'node:http'
import os from 'node:os'
import path from 'node:path'
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { WA_CERT_DETAILS } from 'baileys'
import { formatEntry, sleep, startSimulator, tail, waitUntil, withTimeout } from '../lib/harness.mjs'
import { WAIT, linkBaileys, linkSession, startGateway } from '../lib/parties.mjs'

const WAGATE_PHONE = '15557300001'
const BAILEYS_PHONE = '15557300002'
const SESSION = 'D'
const TOTAL = 300
// How long the gateway takes over each commit of received messages (sandbox builds only).
const SLOW_COMMIT_MS = 40
const INTERRUPTIONS = ['SIGKILL', 'SIGKILL', 'SIGKILL', 'SIGTERM', 'SIGTERM']
// How long a SIGTERM may take to stop the gateway before the test calls it a hang.
const TERM_GRACE_MS = 20000
// After the last text: how long all 300 may take to reach the receiver.
const ARRIVAL_MS = 60000

const SEED = (() => {
  const given = process.env.WAGATE_DURABILITY_SEED
  if (given !== undefined && given !== '') {
    const n = Number(given)
    if (!Number.isInteger(n) || n < 0 || n >= 2 ** 32) throw new Error(`WAGATE_DURABILITY_SEED must be an integer in [0, 2^32): ${given}`)
    return n
  }
  return randomInt(2 ** 32 - 1)
})()

/** mulberry32: a small seeded PRNG, floats in [0, 1). */
function prng (seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6D2B79F5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const s = {
  generations: [], // every gateway process: { n, gateway, ended }
  timeline: [], // what happened when, in ms since the sending started: { at, what }
  sent: [] // { n, id, text, at (the server's ack to Baileys), gateway (its phase when the send began) }
}

const elapsed = () => s.t0 === undefined ? 0 : Date.now() - s.t0
const secs = ms => (ms / 1000).toFixed(2) + ' s'
const note = what => {
  s.timeline.push({ at: elapsed(), what })
  if (process.env.VERBOSE) process.stderr.write(`[durability ${secs(elapsed())}] ${what}\n`)
}

/**
 * A webhook receiver that answers 200 to every POST and keeps, in order, each body with its
 * `webhook-id` header. A request the gateway did not finish sending is not recorded.
 */
async function startRecorder () {
  const posts = []
  const server = http.createServer((req, res) => {
    let raw = ''
    req.setEncoding('utf8')
    req.on('data', c => { raw += c })
    req.on('end', () => {
      let body = null
      try { body = JSON.parse(raw) } catch {}
      posts.push({ at: elapsed(), webhookId: req.headers['webhook-id'], body, raw: body ? undefined : raw.slice(0, 300) })
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end('{}')
    })
  })
  await new Promise(resolve => server.listen(0, '127.0.0.1', resolve))
  const stop = () => { server.closeAllConnections(); server.close() }
  return { posts, url: `http://127.0.0.1:${server.address().port}/hook`, stop }
}

const plain = line => line.replace(/\x1b\[[0-9;]*m/g, '')
// One line per delivered event or per text: they would push everything else out of a tail.
const routineGateway = line => /Webhook delivered: /.test(line)
const routineSim = line => /xmlns="privacy"/.test(line)

function gatewayLogs (lines) {
  const all = []
  for (const g of s.generations) {
    all.push(`--- gateway #${g.n} started at ${secs(g.startedAt)}`)
    all.push(...g.gateway.logs.map(plain).filter(l => !routineGateway(l)))
    if (g.ended) all.push(`--- gateway #${g.n} ${g.ended}`)
  }
  return tail(all, lines, '\nwagate output (all restarts, without "Webhook delivered" lines):')
}

const timeline = () => s.timeline.map(e => `${secs(e.at)} ${e.what}`).join('\n  ')

function context () {
  const problems = (s.baileys?.log.entries ?? []).filter(e => e.level === 'warn' || e.level === 'error').map(formatEntry)
  return '\ntimeline:\n  ' + timeline() +
    tail(problems, 15, '\nBaileys warnings/errors:') + gatewayLogs(60) +
    (s.sim ? tail(s.sim.output.filter(l => !routineSim(l)), 30, '\nsimulator output (without privacy-token iqs):') : '')
}

const current = () => s.generations[s.generations.length - 1]

async function startGeneration () {
  // Each commit of received messages takes a while (as on a slow disk), so kills often
  // land between a message's arrival and its commit: only a gateway that acks WhatsApp
  // after the commit loses nothing then.
  const env = { WAGATE_SANDBOX_SLOW_COMMIT_MS: String(SLOW_COMMIT_MS) }
  const keep = s.generations.length ? { dataDir: s.dataDir, port: current().gateway.port, env } : { dataDir: s.dataDir, env }
  const startedAt = elapsed()
  const gateway = await startGateway(s.sim, s.hook.url, keep)
  s.generations.push({ n: s.generations.length + 1, gateway, startedAt })
  return gateway
}

async function sessionState () {
  try {
    return (await current().gateway.api('GET', `/v1/sessions/${SESSION}`)).json?.state
  } catch {
    return undefined
  }
}

function exitOf (child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve({ code: child.exitCode, signal: child.signalCode })
  return new Promise(resolve => child.once('exit', (code, signal) => resolve({ code, signal })))
}

/** Stops the running gateway with `signal`, waits for it to exit, restarts it and waits until the session is connected. */
async function interrupt (signal, downtimeMs, index) {
  const g = current()
  const child = g.gateway.child
  const state = await sessionState()
  note(`#${index + 1} ${signal} gateway #${g.n} (pid ${child.pid}, session ${state}, ${s.sent.length} texts sent)`)
  const t = Date.now()
  s.phase = `#${g.n} stopping (${signal})`
  child.kill(signal)
  let exit
  try {
    exit = await withTimeout(exitOf(child), signal === 'SIGTERM' ? TERM_GRACE_MS : 10000, `gateway #${g.n} to exit after ${signal}`)
  } catch (e) {
    child.kill('SIGKILL')
    await exitOf(child)
    g.ended = `did not exit in time after ${signal}; killed`
    throw e
  }
  g.ended = `exited after ${signal} in ${Date.now() - t} ms (code ${exit.code}, signal ${exit.signal})`
  s.phase = `down after ${signal} of #${g.n}`
  note(`gateway #${g.n} ${g.ended}`)
  if (signal === 'SIGTERM') {
    assert.equal(exit.code, 0, `gateway #${g.n} should stop cleanly on SIGTERM`)
  }
  await sleep(downtimeMs)
  s.phase = `#${s.generations.length + 1} starting`
  const gateway = await startGeneration()
  s.phase = `#${current().n} connecting`
  note(`gateway #${current().n} listening after ${downtimeMs} ms down`)
  await waitUntil(async () => (await sessionState()) === 'connected', WAIT, `session ${SESSION} connected after restart #${index + 1}`)
  s.connectedAt = Date.now()
  s.phase = `#${current().n} connected`
  note(`gateway #${current().n} session connected (pid ${gateway.child.pid})`)
}

describe('received messages survive SIGKILL and SIGTERM of the gateway', () => {
  before(async () => {
    console.log(`durability seed ${SEED} (replay with WAGATE_DURABILITY_SEED=${SEED})`)
    s.sim = await startSimulator()
    WA_CERT_DETAILS.PUBLIC_KEY = Buffer.from(s.sim.info.root_public_key, 'hex')
    s.hook = await startRecorder()
    // Kept across restarts; removed in after().
    s.dataDir = await mkdtemp(path.join(os.tmpdir(), 'wagate-interop-durability-'))
    await startGeneration()
  })

  after(async () => {
    await s.baileys?.stop()
    const g = current()
    if (g) await withTimeout(g.gateway.stop(), TERM_GRACE_MS, 'the last gateway to stop').catch(() => g.gateway.child.kill('SIGKILL'))
    s.hook?.stop()
    await s.sim?.stop()
    if (s.dataDir) await rm(s.dataDir, { recursive: true, force: true })
  })

  it('links a wagate session and a Baileys client to two phones', { timeout: 90000 }, async () => {
    try {
      await linkSession(current().gateway, s.sim, SESSION, WAGATE_PHONE)
      s.baileys = await linkBaileys(s.sim, BAILEYS_PHONE)
    } catch (e) { e.message += context(); throw e }
  })

  it(`${TOTAL} texts arrive, each as one event, across 3 SIGKILLs and 2 SIGTERMs`, { timeout: 170000 }, async t => {
    const random = prng(SEED)
    const pick = n => Math.floor(random() * n)
    // The plan: the order of the interruptions; the text after which each may happen and
    // how long after the previous reconnect at the earliest (when the restart took so long
    // that the text went by, the interruption lands in the catch-up of the offline queue);
    // how long the gateway stays down; then, as it sends, the pacing of the texts. While
    // texts are being sent, an interruption waits for the server's ack of the next one, then
    // 0-50 ms: it hits the gateway while that text is on its way from the server to the
    // outbox, where a gateway that acks before it commits loses it.
    const order = [...INTERRUPTIONS]
    for (let i = order.length - 1; i > 0; i--) {
      const j = pick(i + 1)
      const swapped = order[j]
      order[j] = order[i]
      order[i] = swapped
    }
    const afterText = Array.from(order, () => 5 + pick(TOTAL - 30)).sort((a, b) => a - b)
    const gap = Array.from(order, () => pick(800))
    const lag = Array.from(order, () => pick(50))
    const downtime = Array.from(order, () => pick(1500))
    const plan = order.map((signal, i) =>
      `${signal} once ${afterText[i]} texts are sent and ${gap[i]} ms connected, ${lag[i]} ms after the next text; down ${downtime[i]} ms`)
    console.log(`plan: ${plan.join('; ')}`)

    const to = `${WAGATE_PHONE}@s.whatsapp.net`
    let sendingDone = false
    // Resolved by the sender each time the server acked a text, so an interruption can
    // land while that text is on its way through the gateway.
    let sentOne = () => {}
    const nextSend = () => new Promise(resolve => { sentOne = resolve })
    let failure = null
    let sendingMs = 0
    try {
      s.t0 = Date.now()
      s.connectedAt = s.t0
      s.phase = '#1 connected'
      note(`sending ${TOTAL} texts; plan (seed ${SEED}): ${plan.join('; ')}`)
      const sender = (async () => {
        let n = 0
        while (n < TOTAL && !failure) {
          // A burst of 1-8 texts back to back, then a pause of up to 250 ms.
          const burst = 1 + pick(8)
          for (let b = 0; b < burst && n < TOTAL; b++, n++) {
            const text = `durable-${n}`
            const gateway = s.phase
            const msg = await s.baileys.sock.sendMessage(to, { text })
            s.sent.push({ n, id: msg.key.id, text, at: elapsed(), gateway })
            sentOne()
          }
          await sleep(pick(250))
        }
        sendingDone = true
        sentOne()
        sendingMs = elapsed()
        note(`all ${TOTAL} texts sent`)
      })().catch(e => { failure ??= e; sentOne(); throw e })
      const chaos = (async () => {
        for (let i = 0; i < order.length; i++) {
          while (!failure && s.sent.length < afterText[i] && !sendingDone) await sleep(5)
          const early = s.connectedAt + gap[i] - Date.now()
          if (early > 0) await sleep(early)
          if (!sendingDone) {
            await nextSend()
            await sleep(lag[i])
          }
          if (failure) return
          await interrupt(order[i], downtime[i], i)
        }
        note('all interruptions done')
      })().catch(e => { failure ??= e; throw e })
      await Promise.all([sender, chaos])

      const ids = new Map(s.sent.map(m => [m.id, m]))
      const upserts = () => s.hook.posts.filter(p => p.body?.event === 'messages.upsert' && ids.has(p.body.data?.id))
      const arrivedIds = () => new Set(upserts().map(p => p.body.data.id))
      await waitUntil(() => arrivedIds().size === ids.size, ARRIVAL_MS, `all ${TOTAL} texts as messages.upsert`).catch(() => {})
      const waitedUntil = elapsed()
      note(`${arrivedIds().size} of ${TOTAL} texts arrived`)

      // Give any late duplicate (a redelivery under a new id) its chance: a live text after
      // the others must arrive, and the gateway's outbox must have nothing pending.
      const sentinel = await s.baileys.sock.sendMessage(to, { text: 'durable-sentinel' })
      await waitUntil(() => s.hook.posts.some(p => p.body?.event === 'messages.upsert' && p.body.data?.id === sentinel.key.id),
        WAIT, 'the sentinel text after the others').catch(e => note(`no sentinel: ${e.message}`))
      await waitUntil(async () => {
        const res = await current().gateway.api('GET', `/v1/webhooks/deliveries?session=${SESSION}&status=pending`)
        return res.status !== 200 || (Array.isArray(res.json) && res.json.length === 0)
      }, WAIT, 'the webhook outbox to empty').catch(e => note(`outbox not empty: ${e.message}`))
      note('settled')

      // Every text, by its message id.
      const missing = s.sent.filter(m => !arrivedIds().has(m.id))
      // Each message's deliveries must all carry one event id (the header and the envelope agree).
      const byMessage = new Map()
      const problems = []
      for (const p of upserts()) {
        const { id, text } = p.body.data
        if (p.webhookId !== p.body.id) problems.push(`webhook-id header ${p.webhookId} != envelope id ${p.body.id} for ${id}`)
        if (text !== ids.get(id).text) problems.push(`message ${id} arrived with text ${JSON.stringify(text)}, sent as ${ids.get(id).text}`)
        if (p.body.session !== SESSION) problems.push(`message ${id} arrived for session ${p.body.session}`)
        const list = byMessage.get(id) ?? []
        list.push(p)
        byMessage.set(id, list)
      }
      const kills = s.timeline.filter(e => / SIG(KILL|TERM) gateway/.test(e.what))
      let duplicates = 0
      let twice = 0 // repeats that one gateway process reported as delivered more than once
      const splits = []
      const repeated = []
      for (const [id, list] of byMessage) {
        const events = new Set(list.map(p => p.webhookId))
        duplicates += list.length - events.size
        if (list.length > events.size) {
          const event = list[0].webhookId
          const said = s.generations.flatMap(g => g.gateway.logs.filter(l => l.includes(event)).map(l => `#${g.n}: ${plain(l)}`))
          if (s.generations.some(g => g.gateway.logs.filter(l => l.includes(event) && routineGateway(l)).length > 1)) twice++
          repeated.push(`${ids.get(id).text} (${event}) at ${list.map(p => secs(p.at)).join(', ')}` +
            (said.length ? `; wagate logged:\n      ${said.slice(0, 4).join('\n      ')}` : ''))
        }
        if (events.size > 1) {
          splits.push(`${ids.get(id).text} (${id}) arrived as ${events.size} events: ` +
            list.map(p => `${p.webhookId} at ${secs(p.at)}${p.body.data.offline ? ' offline' : ''}`).join(', '))
        }
      }
      // Where a send fell among the interruptions (`at` is when the server acked it to Baileys).
      const near = at => {
        const signal = k => k.what.split(' ')[1]
        const before = kills.filter(k => k.at <= at).pop()
        const next = kills.find(k => k.at > at)
        return (before ? `; ${secs(at - before.at)} after ${signal(before)} at ${secs(before.at)}` : '') +
          (next ? `; ${secs(next.at - at)} before ${signal(next)} at ${secs(next.at)}` : '')
      }
      const summary = `seed ${SEED}: ${TOTAL} texts, ${missing.length} missing, ${splits.length} split into several events, ` +
        `${duplicates} duplicate deliveries (same event id; ${twice} reported delivered twice by one gateway process), ${upserts().length} messages.upsert POSTs, ` +
        `sending ${secs(sendingMs)}, arrival wait ended at ${secs(waitedUntil)}, total ${secs(elapsed())}, ${s.generations.length} gateway processes`
      console.log(`${summary}\ntimeline:\n  ${timeline()}` + tail(repeated, 20, '\ndelivered more than once (same event id):'))
      t.diagnostic(summary)

      const report = []
      if (missing.length) {
        report.push(`${missing.length} of ${TOTAL} texts never reached the webhook receiver:\n  ` +
          missing.map(m => `${m.text} (${m.id}) sent at ${secs(m.at)} (gateway ${m.gateway} when the send began${near(m.at)})`).join('\n  '))
      }
      if (splits.length) report.push(`${splits.length} messages arrived under more than one event id:\n  ${splits.join('\n  ')}`)
      if (problems.length) report.push(`wrong deliveries:\n  ${problems.slice(0, 20).join('\n  ')}`)
      if (report.length) {
        let logFile = []
        try {
          logFile = (await readFile(path.join(s.dataDir, 'wagate.log'), 'utf8')).split('\n').filter(Boolean)
        } catch {}
        assert.fail(`${summary}\n${report.join('\n')}${tail(logFile.filter(l => /WARN|ERROR/.test(l)), 30, '\nwarnings and errors of wagate.log:')}`)
      }
    } catch (e) { e.message += context(); throw e }
  })
})
