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
// The collections a profiled account has data in: contacts (snapshot), mutes, pins and archives (patches).
const COLLECTIONS = ['critical_unblock_low', 'regular_high', 'regular_low']
const PROFILE_ARGS = [
  '--account-profile', 'small-business',
  '--profile-contacts', String(CONTACTS),
  '--profile-groups', String(GROUPS),
  '--profile-group-size', '8',
  '--profile-history', String(HISTORY),
  '--profile-trickle-per-minute', '300'
]

const s = { seen: { history: [], contacts: new Set(), trickle: [] } }

function context () {
  const problems = (s.baileys?.log.entries ?? [])
    .filter(e => e.level === 'warn' || e.level === 'error' || /sync|patch|collection/i.test(e.msg ?? ''))
    .filter(e => !/LID mapping|USync/.test(e.msg ?? ''))
    .map(formatEntry)
  return tail(problems, 40, '\nBaileys warnings/errors:') + (s.sim ? tail(s.sim.output, 15, '\nsimulator output:') : '')
}

/** Everything the profile brings, as Baileys reports it. */
function watch (sock) {
  const seen = s.seen
  // Baileys buffers events until its initial sync is done and folds an update of a contact
  // it has not emitted yet into it: app-state names may come in the history event.
  const named = contacts => contacts.forEach(c => { if (c.name) seen.contacts.add(c.id) })
  sock.ev.on('messaging-history.set', ({ chats, contacts, messages, syncType }) => {
    seen.history.push({ chats: chats.map(c => c.id), messages: messages.length, syncType })
    named(contacts)
  })
  sock.ev.on('contacts.upsert', named)
  sock.ev.on('contacts.update', named)
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
      // Baileys checks app-state MACs only when asked to.
      const socketOptions = { appStateMacVerification: { patch: true, snapshot: true } }
      s.baileys = await linkBaileys(s.sim, PHONE, { watch, socketOptions })
      const seen = s.seen
      const messages = () => seen.history.reduce((n, h) => n + h.messages, 0)
      await waitUntil(() => messages() >= HISTORY, WAIT, `${HISTORY} history messages (got ${messages()})`)
      const conversations = new Set(seen.history.flatMap(h => h.chats))
      assert.equal(conversations.size, CONTACTS + GROUPS)
      assert.equal(messages(), HISTORY)
      await waitUntil(() => seen.contacts.size >= CONTACTS, WAIT, `${CONTACTS} contacts from app state (got ${seen.contacts.size})`)
      // Baileys persists a collection's version once it took its snapshot or patch. (The chat
      // settings themselves it may hold back: it applies a mute, pin or archive only to a chat
      // in the same event batch as the history chunk.)
      const versions = async () => {
        const stored = await s.baileys.sock.authState.keys.get('app-state-sync-version', COLLECTIONS)
        return Object.fromEntries(COLLECTIONS.map(name => [name, stored[name]?.version ?? 0]))
      }
      await waitUntil(async () => Object.values(await versions()).every(v => v === 1), WAIT, 'app-state collections at version 1')
        .catch(async e => { e.message += ` (${JSON.stringify(await versions())})`; throw e })
      // A patch whose MAC does not verify is skipped with a warning, its version kept anyway.
      const rejected = s.baileys.log.entries.filter(e => /failed to decode patch|LTHash verification failed|mac/i.test(e.msg ?? '') &&
        (e.level === 'warn' || e.level === 'error'))
      assert.deepEqual(rejected.map(formatEntry), [], 'Baileys refused app state')
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
