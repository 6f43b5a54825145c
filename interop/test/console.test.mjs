// The web console (/console) in headless Chromium, driven by playwright-core, against a
// gateway linked to wagate-sim: Connect shows the QR live, a second tab and a reload leave
// the pairing alone, a scan turns the page to Connected without a reload, the pairing-code
// form links too, logout asks first, and a typed API key goes with every call. Against
// `wagate sandbox`, a session links and exchanges messages by clicks alone: the simulated
// phone scans, the contact echoes a text and sends a PDF that downloads.
// Needs WAGATE_BIN (a sandbox build of `wagate`), the simulator binary (see harness) and
// Chromium (CHROMIUM_BIN, default /usr/bin/chromium). Screenshots go to
// WAGATE_CONSOLE_ARTIFACTS (default target/console-artifacts in the repository).
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, readFile } from 'node:fs/promises'
import path from 'node:path'
import { chromium } from 'playwright-core'
import { control, interopDir, startGateway, startSandbox, startSimulator, tail, waitUntil } from '../lib/harness.mjs'

const WAIT = 30000
const QR_PHONE = '15557100001'
const CODE_PHONE = '15557100002'
const SANDBOX_CONTACT = '+15550100100'
const artifacts = process.env.WAGATE_CONSOLE_ARTIFACTS || path.join(interopDir, '..', 'target', 'console-artifacts')

const s = { pageErrors: [] }

async function session (id) {
  const response = await fetch(`${s.gateway.url}/v1/sessions/${id}`)
  assert.equal(response.status, 200, `GET session ${id}`)
  return response.json()
}

async function simTotals () {
  const { status, json } = await control(s.sim.info.control_url, 'GET', '/control/stats')
  assert.equal(status, 200)
  return json.totals
}

function context () {
  return tail(s.pageErrors, 10, '\nbrowser errors:') + tail(s.gateway?.logs ?? [], 25, '\nwagate output:') +
    (s.sim ? tail(s.sim.output, 10, '\nsimulator output:') : '')
}

async function openConsole (browserContext, hash = '') {
  const page = await browserContext.newPage()
  page.on('pageerror', e => s.pageErrors.push(`pageerror: ${e.message}`))
  page.on('console', m => { if (m.type() === 'error') s.pageErrors.push(`console: ${m.text()}`) })
  await page.goto(`${s.gateway.url}/console${hash}`)
  return page
}

/** The QR text the page shows, once there is one (and its image has loaded). */
async function shownQr (page) {
  const handle = await page.waitForFunction(() => {
    const figure = document.getElementById('qr')
    const image = document.getElementById('qr-image')
    return !figure.hidden && image.complete && image.naturalWidth > 0 && figure.dataset.qr
  }, null, { timeout: WAIT })
  return handle.jsonValue()
}

async function stateShown (page, words) {
  await page.waitForFunction(w => document.getElementById('state-badge').textContent === w, words, { timeout: WAIT })
}

describe('the web console in headless Chromium', () => {
  before(async () => {
    await mkdir(artifacts, { recursive: true })
    s.sim = await startSimulator()
    s.gateway = await startGateway({ waUrl: s.sim.info.ws_url })
    s.browser = await chromium.launch({
      executablePath: process.env.CHROMIUM_BIN || '/usr/bin/chromium',
      // CI runs as root, where Chromium refuses its sandbox.
      args: ['--no-sandbox']
    })
  })

  after(async () => {
    await s.browser?.close()
    await s.gateway?.stop()
    await s.sim?.stop()
  })

  it('connects a session, follows its QR, survives a second tab and a reload, and shows the linked number',
    { timeout: 120000 }, async () => {
      try {
        const tabs = await s.browser.newContext({ viewport: { width: 1100, height: 1000 } })
        const page = await openConsole(tabs)
        await page.getByLabel('Session id').fill('Console-QR')
        await page.getByRole('button', { name: 'Connect' }).click()
        const qr = await shownQr(page)
        const pairing = await session('Console-QR')
        assert.equal(pairing.state, 'awaiting_scan')
        assert.equal(qr, pairing.qr, 'data-qr holds the QR text the API shows')
        assert.match(await page.locator('#state-badge').textContent(), /QR code/)
        assert.equal(await page.locator('#linked').isHidden(), true, 'no number before the link')
        await page.screenshot({ path: path.join(artifacts, 'console-qr.png'), fullPage: true })
        const sockets = await simTotals()

        // A second tab on the same session, which even clicks Connect, and a reload of the
        // first: the session keeps its socket and its QR.
        const second = await openConsole(tabs, '#session=Console-QR')
        assert.equal(await shownQr(second), qr)
        const [again] = await Promise.all([
          second.waitForResponse(r => r.url().endsWith('/v1/sessions') && r.request().method() === 'POST'),
          second.getByRole('button', { name: 'Connect' }).click()
        ])
        assert.equal(again.status(), 200, 'an existing session is answered, not created')
        await page.reload()
        assert.equal(await shownQr(page), qr)
        const after = await simTotals()
        assert.equal(after.connections, sockets.connections, 'no new WhatsApp socket was opened')
        assert.equal(after.pairing_connections, sockets.pairing_connections)
        const still = await session('Console-QR')
        assert.equal(still.state, 'awaiting_scan')
        assert.equal(still.since, pairing.since, 'the session was not restarted')
        assert.equal(still.qr, qr)

        await page.evaluate(() => { window.sameDocument = true })
        const scanned = await control(s.sim.info.control_url, 'POST', '/control/scan', { qr, phone: QR_PHONE })
        assert.equal(scanned.status, 200, scanned.text)
        await stateShown(page, 'Connected')
        assert.equal(await page.evaluate(() => window.sameDocument), true, 'the page was not reloaded')
        assert.equal(await page.locator('#linked').isVisible(), true)
        assert.equal(await page.locator('#me-phone').textContent(), `+${QR_PHONE}`)
        assert.equal(await page.locator('#me-name').textContent(), (await session('Console-QR')).me.push_name)
        assert.equal(await page.locator('#qr').isHidden(), true)
        assert.equal(await page.locator('#qr').getAttribute('data-qr'), null)
        await stateShown(second, 'Connected')
        const row = page.locator('#sessions tr[data-session="Console-QR"]')
        await page.waitForFunction(() => /1 connected/.test(document.getElementById('gateway-status').textContent), null,
          { timeout: WAIT })
        assert.match(await row.textContent(), /Connected/)
        await page.screenshot({ path: path.join(artifacts, 'console-connected.png'), fullPage: true })

        // Logout asks first; declining changes nothing, accepting logs out.
        page.once('dialog', dialog => dialog.dismiss())
        await page.getByRole('button', { name: 'Log out' }).click()
        assert.equal((await session('Console-QR')).state, 'connected')
        page.once('dialog', dialog => dialog.accept())
        await page.getByRole('button', { name: 'Log out' }).click()
        await stateShown(page, 'Logged out')
        assert.equal((await session('Console-QR')).state, 'logged_out')
        assert.match(await page.locator('#state-reason').textContent(), /logged out from here/)
        await tabs.close()
        assert.deepEqual(s.pageErrors, [])
      } catch (e) { e.message += context(); throw e }
    })

  it('links with a phone number through the pairing-code form', { timeout: 90000 }, async () => {
    try {
      const tabs = await s.browser.newContext()
      const page = await openConsole(tabs)
      await page.getByLabel('Session id').fill('Console-Code')
      await page.getByRole('button', { name: 'Connect' }).click()
      await shownQr(page)
      await page.getByLabel('Phone number with country code').fill(`+${CODE_PHONE}`)
      await page.getByRole('button', { name: 'Get pairing code' }).click()
      await page.locator('#pair-result').waitFor({ state: 'visible', timeout: WAIT })
      const code = await page.locator('#pair-code').textContent()
      assert.match(code, /^[A-Z0-9]{4}-[A-Z0-9]{4}$/)
      const typed = await control(s.sim.info.control_url, 'POST', '/control/pair-code', { phone: CODE_PHONE, code })
      assert.equal(typed.status, 200, typed.text)
      await stateShown(page, 'Connected')
      assert.equal(await page.locator('#me-phone').textContent(), `+${CODE_PHONE}`)
      await tabs.close()
    } catch (e) { e.message += context(); throw e }
  })

  it('links and exchanges messages in the sandbox by clicking only', { timeout: 120000 }, async () => {
    const sandbox = await startSandbox()
    const logs = () => tail(s.pageErrors, 10, '\nbrowser errors:') + tail(sandbox.logs, 30, '\nwagate sandbox output:')
    try {
      const tabs = await s.browser.newContext({ viewport: { width: 1100, height: 1400 }, acceptDownloads: true })
      const page = await tabs.newPage()
      page.on('pageerror', e => s.pageErrors.push(`pageerror: ${e.message}`))
      page.on('console', m => { if (m.type() === 'error') s.pageErrors.push(`console: ${m.text()}`) })
      // The address `wagate sandbox` prints.
      await page.goto(`${sandbox.url}/console#session=demo`)
      const scan = page.getByRole('button', { name: 'Scan with a simulated phone' })
      await scan.waitFor({ state: 'visible', timeout: WAIT })
      assert.match(await page.locator('#sandbox').textContent(), new RegExp(`\\${SANDBOX_CONTACT}`))
      await shownQr(page)
      await page.screenshot({ path: path.join(artifacts, 'console-sandbox-qr.png'), fullPage: true })
      await scan.click()
      await stateShown(page, 'Connected')
      const history = await page.locator('#history').textContent()
      assert.match(history, /normal restart after pairing \(515\)/, 'the 515 restart is in the history')
      assert.match(await page.locator('#me-phone').textContent(), /^\+1555020\d{4}$/)

      // The contact is filled in: type, send, and its echo appears.
      assert.equal(await page.getByLabel('To', { exact: true }).inputValue(), SANDBOX_CONTACT)
      await page.getByLabel('Message', { exact: true }).fill('hello from the browser')
      await page.getByRole('button', { name: 'Send', exact: true }).click()
      await page.locator('#messages li.out', { hasText: 'hello from the browser' }).waitFor({ timeout: WAIT })
      const echo = page.locator('#messages li.in').first()
      await echo.waitFor({ timeout: WAIT })
      assert.equal(await echo.locator('.body').textContent(), 'hello from the browser', 'the contact echoes the text')
      assert.match(await echo.locator('.who').textContent(), new RegExp(`^From \\${SANDBOX_CONTACT}`))

      // "file" brings a PDF, downloaded by a click.
      await page.getByLabel('Message', { exact: true }).fill('file')
      await page.getByRole('button', { name: 'Send', exact: true }).click()
      const download = page.getByRole('button', { name: 'Download wagate-sandbox.pdf' })
      await download.waitFor({ timeout: WAIT })
      const [saved] = await Promise.all([page.waitForEvent('download', { timeout: WAIT }), download.click()])
      assert.equal(saved.suggestedFilename(), 'wagate-sandbox.pdf')
      const pdf = await readFile(await saved.path())
      assert.equal(pdf.subarray(0, 5).toString(), '%PDF-')
      await page.screenshot({ path: path.join(artifacts, 'console-sandbox.png'), fullPage: true })
      await tabs.close()
      assert.deepEqual(s.pageErrors, [])
    } catch (e) { e.message += logs(); throw e } finally {
      const exit = await sandbox.stop()
      assert.equal(exit.code, 0, `wagate sandbox exits cleanly on SIGTERM: ${JSON.stringify(exit)}`)
    }
  })

  it('sends a typed API key with every call, the live stream included, and forgets it', { timeout: 60000 }, async () => {
    try {
      const tabs = await s.browser.newContext()
      const page = await openConsole(tabs)
      // Recorded in the order the page made them; the headers come in a moment later.
      const calls = []
      page.on('request', request => {
        const call = { path: new URL(request.url()).pathname }
        if (!call.path.startsWith('/v1/')) return
        calls.push(call)
        // (A request still starting when the tab closes has no headers to read: ignored.)
        request.allHeaders().then(h => { call.authorization = h.authorization ?? null }, () => {})
      })
      const last = (from, path) => calls.slice(from).reverse().find(c => c.path === path && c.authorization !== undefined)
      await page.locator('#access summary').click()
      await page.getByLabel('WAGATE_API_KEY').fill('console-test-key')
      await page.getByRole('button', { name: 'Use this key' }).click()
      await page.getByRole('button', { name: 'Console-Code' }).click()
      await stateShown(page, 'Connected')
      const stream = '/v1/sessions/Console-Code/events'
      await waitUntil(() => last(0, stream) && last(0, '/v1/sessions'), WAIT, 'the stream and the list to be called')
      assert.equal(last(0, stream).authorization, 'Bearer console-test-key', JSON.stringify(calls))
      assert.equal(last(0, '/v1/sessions').authorization, 'Bearer console-test-key', JSON.stringify(calls))
      assert.equal(await page.evaluate(() => sessionStorage.getItem('wagate-api-key')), 'console-test-key')

      // Forgetting it reopens the stream and lists again, without the header.
      const forgotten = calls.length
      await page.getByRole('button', { name: 'Forget it' }).click()
      assert.equal(await page.evaluate(() => sessionStorage.getItem('wagate-api-key')), null)
      await waitUntil(() => last(forgotten, stream) && last(forgotten, '/v1/sessions'), WAIT, 'new calls')
      assert.equal(last(forgotten, stream).authorization, null, JSON.stringify(calls))
      assert.equal(last(forgotten, '/v1/sessions').authorization, null, JSON.stringify(calls))
      assert.equal(await page.locator('#state-badge').textContent(), 'Connected')
      await tabs.close()
    } catch (e) { e.message += context(); throw e }
  })
})
