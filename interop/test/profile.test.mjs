// Baileys 7 linked to a profiled account of wagate-sim (`--account-profile small-business`,
// scaled down): it downloads and decrypts the phone's history chunks and the contacts
// snapshot from the simulator's media host, verifies and applies the app-state patches, and
// decrypts the contacts' trickle. A second client, besides whatsapp-rust, that accepts what
// the simulated phone and contacts produce.
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { WA_CERT_DETAILS } from 'baileys'
import { control, formatEntry, startSimulator, tail, waitUntil } from '../lib/harness.mjs'
import { WAIT, linkBaileys } from '../lib/parties.mjs'

// The simulator's media host has a self-signed certificate.
process.env.NODE_TLS_REJECT_UNAUTHORIZED = '0'

const PHONE = '15559100001'
const CONTACTS = 30
const GROUPS = 3
const HISTORY = 100
const PROFILE_ARGS = [
  '--account-profile', 'small-business',
  '--profile-contacts', String(CONTACTS),
  '--profile-groups', String(GROUPS),
  '--profile-group-size', '8',
  '--profile-history', String(HISTORY),
  '--profile-trickle-per-minute', '300'
]

const s = { seen: { history: [], contacts: new Set(), chats: [], trickle: [] } }

function context () {
  const problems = (s.baileys?.log.entries ?? []).filter(e => e.level === 'warn' || e.level === 'error').map(formatEntry)
  return tail(problems, 20, '\nBaileys warnings/errors:') + (s.sim ? tail(s.sim.output, 15, '\nsimulator output:') : '')
}

/** Everything the profile brings, as Baileys reports it. */
function watch (sock) {
  const seen = s.seen
  sock.ev.on('messaging-history.set', ({ chats, messages, syncType }) => seen.history.push({ chats: chats.map(c => c.id), messages: messages.length, syncType }))
  sock.ev.on('contacts.upsert', contacts => contacts.forEach(c => { if (c.name) seen.contacts.add(c.id) }))
  sock.ev.on('chats.update', updates => seen.chats.push(...updates))
  sock.ev.on('messages.upsert', ({ messages, type }) => {
    if (type === 'notify') seen.trickle.push(...messages.filter(m => m.key.remoteJid?.startsWith('9') && !m.key.fromMe))
  })
}

describe('Baileys 7 on a profiled account', () => {
  before(async () => {
    s.sim = await startSimulator({ extraArgs: PROFILE_ARGS })
    WA_CERT_DETAILS.PUBLIC_KEY = Buffer.from(s.sim.info.root_public_key, 'hex')
    // Baileys fetches history and app-state blobs from WhatsApp's media host by their
    // direct path; here that host is the simulator's (as DNS would make it).
    const media = new URL(s.sim.info.media_url)
    const fetch = globalThis.fetch
    globalThis.fetch = (url, init) => {
      const target = new URL(url.toString())
      if (target.hostname.endsWith('whatsapp.net')) {
        target.protocol = media.protocol
        target.host = media.host
      }
      return fetch(target.toString(), init)
    }
  })

  after(async () => {
    await s.baileys?.stop()
    await s.sim?.stop()
  })

  it('links, and gets the history, the app state and the trickle', { timeout: 90000 }, async () => {
    try {
      s.baileys = await linkBaileys(s.sim, PHONE, { watch })
      const seen = s.seen
      const messages = () => seen.history.reduce((n, h) => n + h.messages, 0)
      await waitUntil(() => messages() >= HISTORY, WAIT, `${HISTORY} history messages (got ${messages()})`)
      const conversations = new Set(seen.history.flatMap(h => h.chats))
      assert.equal(conversations.size, CONTACTS + GROUPS)
      assert.equal(messages(), HISTORY)
      await waitUntil(() => seen.contacts.size >= CONTACTS, WAIT, `${CONTACTS} contacts from app state (got ${seen.contacts.size})`)
      await waitUntil(() => seen.chats.some(c => c.muteEndTime) && seen.chats.some(c => c.archived) && seen.chats.some(c => c.pinned),
        WAIT, 'a muted, an archived and a pinned chat')
      await waitUntil(() => seen.trickle.length >= 3, WAIT, 'three messages from contacts')
      assert.match(seen.trickle[0].message?.conversation ?? '', /\(#\d+\)$/)
      const groups = await s.baileys.sock.groupFetchAllParticipating()
      assert.equal(Object.keys(groups).length, GROUPS)
    } catch (e) { e.message += context(); throw e }
  })

  it('the simulator counted what it sent', async () => {
    const stats = await control(s.sim.info.control_url, 'GET', '/control/stats')
    const profile = stats.json.profile
    assert.equal(profile.history_notifications_sent, 2, JSON.stringify(profile))
    assert.equal(profile.history_blobs_served, 2, JSON.stringify(profile))
    assert.equal(profile.app_state_snapshots_served, 1, JSON.stringify(profile))
    assert.equal(profile.app_state_patches_served, 2, JSON.stringify(profile))
    assert.ok(profile.trickle_messages_sent >= 3, JSON.stringify(profile))
  })
})
