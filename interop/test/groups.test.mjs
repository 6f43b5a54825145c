// A group of wagate and two Baileys 7 clients through wagate-sim: each member's message reaches
// the two others. The simulator relays sender-key messages without decrypting them, so each
// arrival proves that the sender-key distribution between the clients interoperates.
// Needs WAGATE_BIN (a sandbox build of `wagate`) and the simulator binary (see harness).
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { WA_CERT_DETAILS } from 'baileys'
import { control, formatEntry, startSimulator, tail, waitUntil } from '../lib/harness.mjs'
import { WAIT, linkBaileys, linkSession, startGateway, startHookServer } from '../lib/parties.mjs'

const WAGATE_PHONE = '15559000001'
const BAILEYS_PHONES = ['15559000002', '15559000003']
const SUBJECT = 'Interop group'

const s = { baileys: [] }

function context () {
  const problems = s.baileys.flatMap(b => b.log.entries.filter(e => e.level === 'warn' || e.level === 'error')
    .map(e => `[${b.phone}] ${formatEntry(e)}`))
  return tail(problems, 20, '\nBaileys warnings/errors:') + tail(s.gateway?.logs ?? [], 25, '\nwagate output:') +
    (s.sim ? tail(s.sim.output, 15, '\nsimulator output:') : '')
}

const textOf = message => message.message?.conversation ?? message.message?.extendedTextMessage?.text

/** Waits for Baileys client `b` to receive message `id` and returns it. */
const received = (b, id) => waitUntil(() => b.incoming.find(m => m.key.id === id && textOf(m)), WAIT,
  `Baileys ${b.phone} to receive message ${id}`)

/** Waits for wagate's messages.upsert webhook for message `id`. */
const upserted = id => waitUntil(() => s.hooks.hooks.find(h => h.event === 'messages.upsert' && h.data.id === id), WAIT,
  `wagate's messages.upsert for ${id}`)

describe('a group of wagate and two Baileys 7 clients through wagate-sim', () => {
  before(async () => {
    assert.ok(process.env.WAGATE_BIN, 'WAGATE_BIN must point at a sandbox build of wagate')
    s.sim = await startSimulator()
    WA_CERT_DETAILS.PUBLIC_KEY = Buffer.from(s.sim.info.root_public_key, 'hex')
    s.hooks = await startHookServer()
    s.gateway = await startGateway(s.sim, s.hooks.url)
  })

  after(async () => {
    for (const b of s.baileys) await b.stop()
    await s.gateway?.stop()
    s.hooks?.stop()
    await s.sim?.stop()
  })

  it('links wagate and two Baileys clients, and the phone makes them a group', { timeout: 120000 }, async () => {
    try {
      await linkSession(s.gateway, s.sim, 'W', WAGATE_PHONE)
      for (const phone of BAILEYS_PHONES) s.baileys.push(await linkBaileys(s.sim, phone))
      const created = await control(s.sim.info.control_url, 'POST', '/control/groups',
        { subject: SUBJECT, owner: WAGATE_PHONE, participants: BAILEYS_PHONES })
      assert.equal(created.status, 200, created.text)
      s.group = created.json.id
      assert.match(s.group, /^\d+@g\.us$/)
    } catch (e) { e.message += context(); throw e }
  })

  it("Baileys' groupMetadata() describes the group", { timeout: 30000 }, async () => {
    try {
      const meta = await s.baileys[0].sock.groupMetadata(s.group)
      assert.equal(meta.id, s.group)
      assert.equal(meta.subject, SUBJECT)
      assert.equal(meta.size, 3)
      assert.equal(meta.ownerPn, `${WAGATE_PHONE}@s.whatsapp.net`)
      const phones = meta.participants.map(p => p.phoneNumber).sort()
      assert.deepEqual(phones, [WAGATE_PHONE, ...BAILEYS_PHONES].map(p => `${p}@s.whatsapp.net`))
      const admins = meta.participants.filter(p => p.admin).map(p => p.phoneNumber)
      assert.deepEqual(admins, [`${WAGATE_PHONE}@s.whatsapp.net`])
      const all = await s.baileys[1].sock.groupFetchAllParticipating()
      assert.deepEqual(Object.keys(all), [s.group])
    } catch (e) { e.message += context(); throw e }
  })

  it('wagate -> group: both Baileys clients decrypt the text', { timeout: 60000 }, async () => {
    try {
      const sent = await s.gateway.api('POST', '/v1/sessions/W/messages', { to: s.group, text: 'hello group from wagate' })
      assert.equal(sent.status, 200, JSON.stringify(sent.json))
      for (const b of s.baileys) {
        const message = await received(b, sent.json.id)
        assert.equal(textOf(message), 'hello group from wagate')
        assert.equal(message.key.remoteJid, s.group)
        assert.equal(message.key.fromMe, false)
      }
    } catch (e) { e.message += context(); throw e }
  })

  for (const n of [0, 1]) {
    it(`Baileys ${n + 1} -> group: wagate (as messages.upsert) and the other Baileys client get it`, { timeout: 60000 }, async () => {
      try {
        const [sender, other] = n === 0 ? s.baileys : [...s.baileys].reverse()
        const text = `hello group from Baileys ${sender.phone}`
        const sent = await sender.sock.sendMessage(s.group, { text })
        const upsert = await upserted(sent.key.id)
        assert.equal(upsert.session, 'W')
        assert.equal(upsert.data.type, 'text')
        assert.equal(upsert.data.text, text)
        assert.equal(upsert.data.is_group, true)
        assert.equal(upsert.data.chat, s.group)
        assert.equal(upsert.data.group_id, s.group.split('@')[0])
        assert.equal(upsert.data.group_subject, SUBJECT)
        assert.equal(upsert.data.sender_phone, sender.phone, JSON.stringify(upsert.data))
        const message = await received(other, sent.key.id)
        assert.equal(textOf(message), text)
        assert.equal(message.key.remoteJid, s.group)
      } catch (e) { e.message += context(); throw e }
    })
  }

  it('the simulator understood every group iq', async () => {
    const unknown = await control(s.sim.info.control_url, 'GET', '/control/unknown-iqs')
    assert.deepEqual(unknown.json.filter(iq => iq.xmlns === 'w:g2'), [])
  })
})
