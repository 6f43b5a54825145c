// The wagate console: a list of sessions, a live view of one session (its QR code while it
// waits for a scan, the linked number once connected, its history, the messages it sends
// and receives, its webhook's recent events) and the few actions an operator needs.
// Everything goes through the native API (/v1) with fetch(), so that an API key typed into
// the page can be sent as a header; that is also why the event stream is read with fetch()
// rather than EventSource, which cannot send headers.
'use strict'

const KEY_STORAGE = 'wagate-api-key'
const LIST_EVERY_MS = 3000
const STREAM_RETRY_MAX_MS = 15000
// The lists of one session keep their newest entries only.
const LOG_MAX = 200
const DELIVERIES_SHOWN = 8

const STATE_WORDS = {
  stopped: 'Stopped',
  connecting: 'Connecting…',
  awaiting_scan: 'Waiting for the QR code to be scanned',
  pairing: 'Pairing…',
  connected: 'Connected',
  reconnecting: 'Reconnecting…',
  logged_out: 'Logged out',
  replaced: 'Replaced by another connection',
  banned: 'Temporarily banned',
  outdated: 'Update needed',
  failed: 'Failed'
}

const REASON_WORDS = {
  started: 'started',
  restored: 'reconnected after the gateway restarted',
  restart_required: 'normal restart after pairing (515)',
  connection_lost: 'the connection was lost',
  stream_error: 'WhatsApp closed the stream with an error',
  qr_timeout: 'no QR code was scanned in time',
  logged_out: 'unlinked from the phone (401): link again',
  logout_requested: 'logged out from here',
  replaced: 'the same account connected elsewhere (440)',
  temp_banned: 'temporary ban by WhatsApp (402)',
  client_outdated: 'WhatsApp refuses this version (405): update wagate',
  multi_device_mismatch: 'multi-device mismatch (411): log out and link again',
  bad_session: 'WhatsApp keeps rejecting this session (500): log out and link again',
  login_failure: 'WhatsApp refused the login',
  stopped: 'stopped',
  pairing_incomplete: 'the last pairing did not complete'
}

const $ = id => document.getElementById(id)

// ---- talking to the API ----------------------------------------------------------------

class ApiError extends Error {
  constructor (status, message) {
    super(message)
    this.status = status
  }
}

function apiKey () {
  return sessionStorage.getItem(KEY_STORAGE) || ''
}

// Every call says it comes from the console: wagate refuses a POST that is neither JSON nor
// from one of its own clients (a form on another site could send one).
function headers (extra = {}) {
  const key = apiKey()
  const ours = { ...extra, 'X-Wagate-Client': 'console' }
  return key ? { ...ours, Authorization: `Bearer ${key}` } : ours
}

// Relative to /console, so the console also works behind a proxy that adds a path prefix.
function sessionPath (id, rest = '') {
  return `v1/sessions/${encodeURIComponent(id)}${rest}`
}

async function failure (response) {
  let message = `HTTP ${response.status}`
  try {
    const body = await response.json()
    if (body && typeof body.error === 'string') message = body.error
  } catch { /* not JSON: keep the status line */ }
  if (response.status === 401 || response.status === 403) askForKey(message)
  return new ApiError(response.status, message)
}

async function api (method, path, body) {
  const init = { method, headers: headers(body === undefined ? {} : { 'Content-Type': 'application/json' }), cache: 'no-store' }
  if (body !== undefined) init.body = JSON.stringify(body)
  const response = await fetch(path, init)
  if (!response.ok) throw await failure(response)
  return response.json()
}

// ---- words -------------------------------------------------------------------------------

function stateWords (state) {
  return STATE_WORDS[state] || state
}

function reasonWords (view) {
  if (!view.reason) return ''
  const words = REASON_WORDS[view.reason] || view.reason.replace(/_/g, ' ')
  return view.code && !words.includes(`(${view.code})`) ? `${words} (${view.code})` : words
}

function when (timestamp) {
  if (!timestamp) return ''
  const at = new Date(timestamp)
  if (Number.isNaN(at.getTime())) return timestamp
  const sameDay = at.toDateString() === new Date().toDateString()
  return sameDay ? at.toLocaleTimeString() : at.toLocaleString()
}

function phoneWords (me) {
  if (!me) return ''
  if (me.phone) return `+${me.phone}`
  return me.jid ? me.jid.split(/[:@]/)[0] : ''
}

function show (element, visible) {
  element.hidden = !visible
}

function say (element, text) {
  element.textContent = text || ''
  show(element, Boolean(text))
}

// ---- the API key -----------------------------------------------------------------------

function askForKey (message) {
  const text = `${message}. Type the gateway's API key below.`
  if ($('access-message').textContent === text) return // asked already; the operator may have closed it
  say($('access-message'), text)
  $('access').open = true
}

function showKeyState () {
  $('key-state').textContent = apiKey() ? 'A key is set for this tab.' : 'No key is set.'
}

// ---- the session list --------------------------------------------------------------------

let listed = ''
let listings = 0 // polls and events both list: only the newest answer is shown

async function refreshList () {
  const listing = ++listings
  let sessions
  try {
    sessions = await api('GET', 'v1/sessions')
  } catch (e) {
    if (listing === listings) $('gateway-status').textContent = `Cannot list the sessions: ${e.message}`
    return
  }
  if (listing !== listings) return
  $('gateway-status').textContent = `${sessions.length} session${sessions.length === 1 ? '' : 's'}, ` +
    `${sessions.filter(s => s.state === 'connected').length} connected`
  const rows = sessions.map(s => [s.id, s.state, s.since, phoneWords(s.me), reasonWords(s)])
  const fingerprint = JSON.stringify([rows, followed && followed.id])
  if (fingerprint === listed) return // unchanged: leave the table (and the focus in it) alone
  listed = fingerprint
  const body = $('sessions').tBodies[0]
  body.replaceChildren(...sessions.map(sessionRow))
  show($('no-sessions'), sessions.length === 0)
}

function sessionRow (view) {
  const row = document.createElement('tr')
  row.dataset.session = view.id
  if (followed && followed.id === view.id) row.setAttribute('aria-current', 'true')
  const open = document.createElement('button')
  open.type = 'button'
  open.className = 'link'
  open.textContent = view.id
  open.title = `Show session ${view.id}`
  open.addEventListener('click', () => follow(view.id))
  const cells = [open, badge(view.state), when(view.since), phoneWords(view.me), reasonWords(view)]
  for (const content of cells) {
    const cell = document.createElement('td')
    cell.append(content)
    row.append(cell)
  }
  return row
}

function badge (state) {
  const element = document.createElement('span')
  element.className = `badge state-${state}`
  element.textContent = stateWords(state)
  return element
}

// ---- one session, live -------------------------------------------------------------------

let followed = null // { id, controller, qr, image }

function sleep (ms, signal) {
  return new Promise(resolve => {
    const timer = setTimeout(resolve, ms)
    signal.addEventListener('abort', () => { clearTimeout(timer); resolve() }, { once: true })
  })
}

// Shows a session and follows its event stream until another one is chosen. Only reads:
// opening or reloading the page never starts or restarts anything.
function follow (id) {
  if (followed && followed.id === id) return
  if (followed) followed.controller.abort()
  followed = { id, controller: new AbortController(), qr: null, last: null }
  history.replaceState(null, '', `#session=${encodeURIComponent(id)}`)
  $('session-name').textContent = id
  say($('session-error'), '')
  show($('pair-result'), false)
  $('messages').replaceChildren()
  show($('no-messages'), true)
  $('history').replaceChildren()
  render({ id, state: null })
  show($('session'), true)
  listed = ''
  refreshList()
  stream(followed)
  refreshWebhook()
}

async function stream (current) {
  const { signal } = current.controller
  let delay = 1000
  while (!signal.aborted) {
    try {
      const response = await fetch(sessionPath(current.id, '/events'), {
        headers: headers({ Accept: 'text/event-stream' }), cache: 'no-store', signal
      })
      if (response.status === 404) {
        say($('session-error'), `There is no session “${current.id}” (any more). Connect it to create it.`)
        $('stream-status').textContent = ''
        return
      }
      if (!response.ok) throw await failure(response)
      $('stream-status').textContent = 'Live: this page follows every change.'
      delay = 1000
      await readEvents(response.body, signal, (event, data) => {
        if (current !== followed) return
        if (event === 'message') {
          showReceived(JSON.parse(data))
        } else if (event === 'state') {
          render(JSON.parse(data))
          refreshList() // the list and the counts show the change at once, not at the next poll
        }
      })
    } catch (e) {
      if (signal.aborted) return
      $('stream-status').textContent = `Lost the live updates (${e.message}); trying again…`
    }
    if (signal.aborted) return
    $('stream-status').textContent = 'Reconnecting to the gateway for live updates…'
    await sleep(delay, signal)
    delay = Math.min(delay * 2, STREAM_RETRY_MAX_MS)
  }
}

// A minimal text/event-stream reader: `event:` and `data:` fields, a blank line ends an event.
async function readEvents (body, signal, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader()
  signal.addEventListener('abort', () => reader.cancel().catch(() => {}), { once: true })
  let buffer = ''
  let event = 'message'
  let data = []
  for (;;) {
    const { value, done } = await reader.read()
    if (done) return
    buffer += value
    const lines = buffer.split(/\r\n|\r|\n/)
    buffer = lines.pop()
    for (const line of lines) {
      if (line === '') {
        if (data.length) onEvent(event, data.join('\n'))
        event = 'message'
        data = []
      } else if (!line.startsWith(':')) {
        const colon = line.indexOf(':')
        const field = colon < 0 ? line : line.slice(0, colon)
        const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '')
        if (field === 'event') event = value
        else if (field === 'data') data.push(value)
      }
    }
  }
}

function render (view) {
  const state = view.state
  const badgeElement = $('state-badge')
  badgeElement.className = `badge state-${state || 'unknown'}`
  badgeElement.textContent = state ? stateWords(state) : 'Loading…'
  $('state-since').textContent = view.since ? `since ${when(view.since)}` : ''
  $('state-detail').textContent = view.detail || ''
  const extra = [
    view.reason && `Reason: ${reasonWords(view)}.`,
    view.next_attempt_at && `Next attempt at ${when(view.next_attempt_at)}.`,
    view.banned_until && `Banned until ${when(view.banned_until)}.`,
    view.last_error && `Last error: ${view.last_error}.`
  ].filter(Boolean).join(' ')
  say($('state-reason'), extra)

  const linked = state === 'connected' || state === 'pairing' || ((state === 'connecting' || state === 'reconnecting') && view.me)
  $('me-phone').textContent = phoneWords(view.me) || '—'
  $('me-name').textContent = (view.me && view.me.push_name) || '—'
  show($('linked'), Boolean(linked && view.me))

  show($('linking'), state === 'awaiting_scan')
  showQr(state === 'awaiting_scan' ? view.qr : null, view.qr_expires_at)
  if (state !== 'awaiting_scan' && state !== 'connecting') show($('pair-result'), false)

  const active = ['connecting', 'awaiting_scan', 'pairing', 'connected', 'reconnecting'].includes(state)
  show($('logout'), active || Boolean(state && state !== 'logged_out' && view.me))
  // Sends while it reconnects are queued and go out once it is back.
  show($('chat'), state === 'connected' || ((state === 'connecting' || state === 'reconnecting') && Boolean(view.me)))
  if (state) remember(view)
}

// ---- history, messages, webhook ------------------------------------------------------------

function clock (date) {
  return date.toLocaleTimeString()
}

// Appends an entry to a list, keeping the newest LOG_MAX, and scrolls to it.
function append (list, item) {
  list.append(item)
  while (list.children.length > LOG_MAX) list.firstElementChild.remove()
  list.scrollTop = list.scrollHeight
}

function entry (className, when, who, body) {
  const item = document.createElement('li')
  if (className) item.className = className
  const time = document.createElement('span')
  time.className = 'when'
  time.textContent = clock(when)
  item.append(time)
  if (who) {
    const name = document.createElement('span')
    name.className = 'who'
    name.textContent = who
    item.append(name)
  }
  const text = document.createElement('span')
  text.className = 'body'
  text.textContent = body
  item.append(text)
  return item
}

// A line in the session's history: each change of state (the 515 restart after a pairing
// included), and notes of what this page did.
function note (text, when = new Date()) {
  append($('history'), entry('', when, '', text))
}

function remember (view) {
  const key = [view.state, view.reason, view.code].join('|')
  if (followed.last === key) return // a new QR code, or the same state again after a reconnect
  followed.last = key
  const why = view.reason ? ` (${reasonWords(view)})` : ''
  note(`${stateWords(view.state)}${why}`, view.since ? new Date(view.since) : new Date())
}

function jidWords (jid) {
  if (!jid) return ''
  const user = jid.split(/[:@]/)[0]
  return jid.endsWith('@s.whatsapp.net') ? `+${user}` : jid
}

// A message the session received, as its `messages.upsert` event carries it.
function showReceived (message) {
  const from = message.sender_phone ? `+${message.sender_phone}` : jidWords(message.sender)
  const name = message.push_name ? ` (${message.push_name})` : ''
  const where = message.is_group ? ` in ${message.group_subject || message.group_id}` : ''
  const body = message.text || (message.reaction !== null && message.reaction !== undefined
    ? `reacted ${message.reaction || '(removed)'}`
    : `[${message.type}]`)
  const item = entry('in', new Date(message.timestamp * 1000), `From ${from}${name}${where}:`, body)
  item.dataset.messageId = message.id
  item.dataset.type = message.type
  if (message.quoted_text) {
    const quote = document.createElement('div')
    quote.className = 'muted'
    quote.textContent = `↩ a reply to “${message.quoted_text}”`
    item.append(quote)
  }
  if (message.media) item.append(downloadButton(message))
  const details = document.createElement('details')
  const summary = document.createElement('summary')
  summary.textContent = 'As a webhook receives it (messages.upsert data)'
  const json = document.createElement('pre')
  json.textContent = JSON.stringify(message, null, 2)
  details.append(summary, json)
  item.append(details)
  show($('no-messages'), false)
  append($('messages'), item)
  refreshWebhook()
}

function showSent (sent, text) {
  const item = entry('out', new Date(sent.timestamp || Date.now()), `To ${jidWords(sent.to)}:`, text)
  item.dataset.messageId = sent.id
  const status = document.createElement('span')
  status.className = 'muted'
  status.textContent = ` (${sent.status})`
  item.append(status)
  show($('no-messages'), false)
  append($('messages'), item)
}

function downloadButton (message) {
  const button = document.createElement('button')
  button.type = 'button'
  button.className = 'link download'
  const name = message.media.filename || `${message.id}.${message.type}`
  button.textContent = `Download ${name}`
  const id = followed.id
  button.addEventListener('click', async () => {
    button.disabled = true
    try {
      await download(id, message.id, name)
    } catch (e) {
      say($('session-error'), `Cannot download the file: ${e.message}`)
    } finally {
      button.disabled = false
    }
  })
  return button
}

// Files are fetched with the key (hence as a blob), then handed to the browser to save.
async function download (id, messageId, name) {
  const response = await fetch(sessionPath(id, `/media/${encodeURIComponent(messageId)}`), { headers: headers(), cache: 'no-store' })
  if (!response.ok) throw await failure(response)
  const url = URL.createObjectURL(await response.blob())
  const link = document.createElement('a')
  link.href = url
  link.download = name
  document.body.append(link)
  link.click()
  link.remove()
  setTimeout(() => URL.revokeObjectURL(url), 60000)
}

let webhookShown = ''

// The session's webhook and its most recent events (the API keeps them for a while).
async function refreshWebhook () {
  const current = followed
  if (!current) return
  let own, deliveries
  try {
    own = (await api('GET', sessionPath(current.id))).webhook
    deliveries = await api('GET', `v1/webhooks/deliveries?session=${encodeURIComponent(current.id)}&limit=${DELIVERIES_SHOWN}`)
  } catch {
    return // the session list says what is wrong with the gateway
  }
  if (followed !== current) return
  const fingerprint = JSON.stringify([current.id, own, deliveries])
  if (fingerprint === webhookShown) return
  webhookShown = fingerprint
  $('webhook-target').textContent = own
    ? `Every event of this session goes to ${own.url}${own.has_secret ? ', signed' : ''}.`
    : 'This session has no webhook of its own: its events go to the gateway\'s default webhook if one is set, else nowhere.'
  const rows = deliveries.map(d => {
    const row = document.createElement('tr')
    const answer = d.last_status ? `HTTP ${d.last_status}` : (d.last_error || '—')
    for (const text of [d.event, d.status, String(d.attempts), answer, when(new Date(d.created_ms).toISOString())]) {
      const cell = document.createElement('td')
      cell.textContent = text
      row.append(cell)
    }
    return row
  })
  $('deliveries').tBodies[0].replaceChildren(...rows)
  show($('deliveries'), rows.length > 0)
}

// The QR text goes into data-qr as it arrives; the image is fetched from the API (with the
// key, hence as a blob) and only shown if no newer code arrived meanwhile.
async function showQr (code, expiresAt) {
  const figure = $('qr')
  const current = followed
  if (!code) {
    show(figure, false)
    figure.removeAttribute('data-qr')
    current.qr = null
    return
  }
  $('qr-expires').textContent = expiresAt ? `This one is valid until ${when(expiresAt)}.` : ''
  if (current.qr === code) return
  current.qr = code
  figure.dataset.qr = code
  try {
    const response = await fetch(sessionPath(current.id, '/qr?format=svg'), { headers: headers(), cache: 'no-store' })
    if (!response.ok) throw await failure(response)
    const image = URL.createObjectURL(await response.blob())
    if (followed !== current || current.qr !== code) {
      URL.revokeObjectURL(image)
      return
    }
    const img = $('qr-image')
    if (img.src.startsWith('blob:')) URL.revokeObjectURL(img.src)
    img.src = image
    show(figure, true)
  } catch (e) {
    // 409: the session moved on (scanned, or a new code) before the image came; the next
    // state event shows what is current.
    if (e.status !== 409) say($('session-error'), `Cannot load the QR code: ${e.message}`)
  }
}

// ---- actions -------------------------------------------------------------------------------

async function connect (event) {
  event.preventDefault()
  const input = $('session-id')
  const id = input.value.trim()
  say($('connect-error'), '')
  try {
    // Idempotent: creates the session, or starts it if stopped; a running one is left alone.
    await api('POST', 'v1/sessions', { id })
    follow(id)
    refreshList()
  } catch (e) {
    say($('connect-error'), `Could not connect “${id}”: ${e.message}`)
  }
}

async function sendMessage (event) {
  event.preventDefault()
  if (!followed) return
  const id = followed.id
  const button = event.submitter || $('send-form').querySelector('button')
  const text = $('send-text').value
  button.disabled = true
  say($('session-error'), '')
  try {
    const sent = await api('POST', sessionPath(id, '/messages'), { to: $('send-to').value, text })
    if (followed && followed.id === id) showSent(sent, text)
    $('send-text').value = ''
    $('send-text').focus()
  } catch (e) {
    say($('session-error'), `Not sent: ${e.message}`)
  } finally {
    button.disabled = false
  }
}

async function requestPairCode (event) {
  event.preventDefault()
  if (!followed) return
  const button = event.submitter || $('pair-form').querySelector('button')
  button.disabled = true
  say($('session-error'), '')
  try {
    const { code } = await api('POST', sessionPath(followed.id, '/pair-code'), { phone: $('pair-phone').value })
    $('pair-code').textContent = code
    show($('pair-result'), true)
  } catch (e) {
    say($('session-error'), `No pairing code: ${e.message}`)
  } finally {
    button.disabled = false
  }
}

async function logout () {
  if (!followed) return
  const id = followed.id
  if (!confirm(`Log out session “${id}”? WhatsApp unlinks this device and its keys are deleted; linking again needs a new scan.`)) return
  say($('session-error'), '')
  try {
    await api('POST', sessionPath(id, '/logout'))
    refreshList()
  } catch (e) {
    say($('session-error'), `Could not log out: ${e.message}`)
  }
}

function useKey (event) {
  event.preventDefault()
  sessionStorage.setItem(KEY_STORAGE, $('api-key').value.trim())
  $('api-key').value = ''
  say($('access-message'), '')
  restart()
}

function forgetKey () {
  sessionStorage.removeItem(KEY_STORAGE)
  restart()
}

// After a key change: list again and reopen the followed session's stream with the new key.
function restart () {
  showKeyState()
  listed = ''
  webhookShown = ''
  refreshList()
  if (followed) {
    const id = followed.id
    followed.controller.abort()
    followed = null
    follow(id)
  }
}

function start () {
  $('connect-form').addEventListener('submit', connect)
  $('pair-form').addEventListener('submit', requestPairCode)
  $('send-form').addEventListener('submit', sendMessage)
  $('logout').addEventListener('click', logout)
  $('key-form').addEventListener('submit', useKey)
  $('forget-key').addEventListener('click', forgetKey)
  showKeyState()
  const remembered = /^#session=(.+)$/.exec(location.hash)
  if (remembered) {
    const id = decodeURIComponent(remembered[1])
    $('session-id').value = id
    follow(id)
  }
  refreshList()
  setInterval(() => { refreshList(); refreshWebhook() }, LIST_EVERY_MS)
}

start()
