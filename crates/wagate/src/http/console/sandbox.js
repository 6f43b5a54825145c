// The sandbox's part of the console, served only by `wagate sandbox`: a simulated phone
// that scans the QR code, and the simulated contact to write to. It runs after console.js,
// in the same global scope, and uses its helpers ($, api, say, show, note, followed).
'use strict'

async function startSandbox () {
  let sandbox
  try {
    sandbox = await api('GET', 'v1/sandbox')
  } catch (e) {
    say($('gateway-status'), `Cannot reach the sandbox: ${e.message}`)
    return
  }
  const contact = sandbox.contact
  document.title = 'wagate sandbox console'
  $('connect-title').closest('section').before(banner(contact))

  // Beside the QR code: the phone that scans it.
  const scan = document.createElement('div')
  scan.id = 'sandbox-scan'
  const button = document.createElement('button')
  button.type = 'button'
  button.textContent = 'Scan with a simulated phone'
  button.addEventListener('click', simulatedScan)
  const hint = document.createElement('p')
  hint.className = 'hint'
  hint.textContent = 'No phone needed: a phone of the simulator built into this sandbox scans the code, ' +
    'as a real one would. The session then restarts once (515, normal after pairing) and connects.'
  scan.append(button, hint)
  $('qr').after(scan)

  // The contact is who to write to first.
  if (!$('send-to').value) $('send-to').value = `+${contact.phone}`
  $('send-hint').textContent = `The simulated contact +${contact.phone} echoes every text as a reply; ` +
    `send “${contact.file_keyword}” and it sends back ${contact.file}, to download here.`
}

function banner (contact) {
  const section = document.createElement('section')
  section.id = 'sandbox'
  section.className = 'notice'
  section.setAttribute('aria-labelledby', 'sandbox-title')
  const title = document.createElement('h2')
  title.id = 'sandbox-title'
  title.textContent = 'Sandbox: WhatsApp is simulated'
  const what = document.createElement('p')
  what.textContent = 'A WhatsApp simulator runs inside this gateway: nothing here reaches WhatsApp. ' +
    'Click “Scan with a simulated phone” beside a session’s QR code to link it, then send a message.'
  const who = document.createElement('dl')
  const pairs = [
    ['Contact', `+${contact.phone} (${contact.name})`],
    ['It answers', `every text with the same text; “${contact.file_keyword}” with ${contact.file}`]
  ]
  for (const [term, text] of pairs) {
    const dt = document.createElement('dt')
    dt.textContent = term
    const dd = document.createElement('dd')
    dd.textContent = text
    who.append(dt, dd)
  }
  who.querySelector('dd').id = 'sandbox-contact'
  section.append(title, what, who)
  return section
}

async function simulatedScan (event) {
  if (!followed) return
  const button = event.currentTarget
  const id = followed.id
  button.disabled = true
  say($('session-error'), '')
  // Noted first: the pairing's states arrive while the call still waits for it to finish.
  note('A simulated phone scans the QR code')
  try {
    await api('POST', 'v1/sandbox/scan', { session: id })
  } catch (e) {
    say($('session-error'), `The simulated phone could not scan: ${e.message}`)
  } finally {
    button.disabled = false
  }
}

startSandbox()
