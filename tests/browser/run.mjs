// The browser half of tests/tests/browser.rs: drives Debian's chromium through playwright-core
// against a server the Rust test started and filled, and reports what it did and saw as one
// JSON line (`RESULT {...}`). The Rust side checks that against the database, so this script
// asserts only what the page itself must show. Screenshots go to cfg.shots.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';

const cfg = JSON.parse(process.env.APL_BROWSER_CONFIG);
const TIMEOUT = 120_000;
const out = { errors: [], steps: [] };
let offline = false;
fs.mkdirSync(cfg.shots, { recursive: true });

const browser = await chromium.launch({
  executablePath: cfg.chromium,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run', '--disable-quic'],
});

function watch(page, name) {
  page.on('console', (m) => {
    // Chromium's own report of the requests the test cut off on purpose is not a page error.
    if (m.type() === 'error' && !(offline && m.text().includes('ERR_INTERNET_DISCONNECTED'))) {
      out.errors.push(`${name}: console error: ${m.text()}`);
    }
  });
  page.on('pageerror', (e) => out.errors.push(`${name}: uncaught: ${e.message}`));
  page.on('response', (r) => {
    if (r.url().endsWith('_bg.wasm')) out.wasm = { url: new URL(r.url()).pathname, encoding: r.headers()['content-encoding'] ?? null };
    // A 4xx the test provokes on purpose is not an error of the page; 5xx always is.
    if (r.status() >= 500) out.errors.push(`${name}: ${r.status()} from ${r.url()}`);
  });
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(cfg.shots, `${name}.png`), fullPage: true });
}

async function newPage(name, viewport = { width: 1280, height: 900 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  watch(page, name);
  return { context, page };
}

const currentPair = (page) => page.evaluate(() => document.querySelector('section.pair')?.dataset.pair ?? null);

/// Presses `key` on the current pair and waits for the next pair (or the end); returns the pair answered.
async function answer(page, key) {
  const before = await currentPair(page);
  await page.keyboard.press(key);
  await page.waitForFunction((b) => {
    if (document.querySelector('.done-state')) return true;
    const s = document.querySelector('section.pair');
    return s && s.dataset.pair !== b && !document.querySelector('.choices button[disabled]');
  }, before);
  return before;
}

async function waitReady(page) {
  await page.waitForFunction(() => document.querySelector('.done-state')
    || (document.querySelector('section.pair[data-pair]') && !document.querySelector('.choices button[disabled]')));
}

try {
  // 1. A rater labels with the keyboard only, undoes one, loses the connection once.
  {
    const { context, page } = await newPage('rate');
    await page.goto(`${cfg.base}/rate#token=${cfg.rater.token}`);
    await waitReady(page);
    if ((await page.url()).includes('token=')) throw new Error('the token stayed in the address bar');
    await shot(page, 'rate');
    const labels = [];
    labels.push([await answer(page, '1'), 'left']);
    labels.push([await answer(page, 'ArrowRight'), 'right']);
    labels.push([await answer(page, 't'), 'tie']);
    const undone = await answer(page, 'x');
    // Undo brings the pair just answered back.
    await page.keyboard.press('u');
    await page.waitForFunction((p) => document.querySelector('section.pair')?.dataset.pair === p
      && !document.querySelector('.choices button[disabled]'), undone);
    out.steps.push('undo brought the pair back');
    // A rationale: keys typed into it are text, not answers; Escape leaves the field.
    await page.click('.rationale input');
    await page.keyboard.type(cfg.rationale);
    if (await currentPair(page) !== undone) throw new Error('typing in the rationale answered the pair');
    await page.keyboard.press('Escape');
    // A reload keeps the pair and the rationale typed for it.
    await page.reload();
    await waitReady(page);
    if (await currentPair(page) !== undone) throw new Error('after a reload the rater got another pair');
    if (await page.inputValue('.rationale input') !== cfg.rationale) throw new Error('the rationale draft was lost on reload');
    labels.push([await answer(page, '2'), 'right']);
    if (await page.inputValue('.rationale input') !== '') throw new Error('the rationale was not cleared after saving');
    await page.keyboard.press('?');
    await page.waitForSelector('table.keys');
    await shot(page, 'rate-keys');
    await page.keyboard.press('?');
    labels.push([await answer(page, 's'), 'skip']);
    // Offline: the answer waits, the page says so, and it is sent once back online.
    offline = true;
    await context.setOffline(true);
    const offlinePair = await currentPair(page);
    await page.keyboard.press('1');
    await page.waitForSelector('.banner.offline');
    await shot(page, 'rate-offline');
    await context.setOffline(false);
    await page.waitForFunction((b) => document.querySelector('.done-state')
      || document.querySelector('section.pair')?.dataset.pair !== b, offlinePair);
    labels.push([offlinePair, 'left']);
    offline = false;
    await page.waitForSelector('.done-state');
    const progress = await page.textContent('[data-testid=progress]');
    await shot(page, 'rate-done');
    out.rater = { labels, undone, progress };
    // Narrow screen: the completions stack.
    const phone = await newPage('rate-phone', { width: 390, height: 844 });
    await phone.page.goto(`${cfg.base}/rate#token=${cfg.rater.phone_token}`);
    await waitReady(phone.page);
    await shot(phone.page, 'rate-phone');
    await phone.context.close();
    await context.close();
  }

  // 2. The admin starts a round on the tiny model and watches it to the end.
  let admin;
  {
    admin = await newPage('dashboard');
    const { page } = admin;
    await page.goto(`${cfg.base}/#admin=${cfg.admin}`);
    await page.waitForSelector('table a');
    await shot(page, 'projects');
    await page.goto(`${cfg.base}/projects/${cfg.round_project}?tab=run`);
    await page.waitForSelector('form button[type=submit]');
    await page.click('form button[type=submit]');
    await page.waitForSelector('.job[data-state]');
    const seen = new Set();
    let shotProgress = false;
    const deadline = Date.now() + TIMEOUT;
    for (;;) {
      const s = await page.evaluate(() => {
        const j = document.querySelector('.job');
        return { state: j?.dataset.state, bar: !!j?.querySelector('progress'), text: j?.querySelector('p.muted')?.textContent };
      });
      if (s.bar) seen.add('progress bar');
      if (s.text) seen.add(s.text.split(' · ')[0]);
      if (s.bar && s.state === 'running' && !shotProgress) { await shot(page, 'run-progress'); shotProgress = true; }
      if (s.state === 'done' || s.state === 'failed') { out.round = { state: s.state, seen: [...seen] }; break; }
      if (Date.now() > deadline) throw new Error('the round did not finish in time');
      await page.waitForTimeout(50);
    }
    if (!shotProgress) await shot(page, 'run-progress');
    // A second round, acquired by the trained policy with preference certainty: its candidates
    // have scores, drawn as a histogram.
    await page.selectOption('select[name=acquisition]', 'certainty');
    await page.click('form button[type=submit]');
    await page.waitForFunction(() => document.querySelectorAll('.job[data-state=done], .job[data-state=failed]').length >= 2);
    out.round.second = await page.evaluate(() => document.querySelector('.job')?.dataset.state);
    // The rounds list reloads once the job ends; until then it still shows round 1 (whose
    // random acquisition has no scores), so wait for round 2's scores, not for any table.
    await page.waitForSelector('section h2:has-text("Rounds") ~ table');
    await page.waitForSelector('h3:has-text("Round 2: acquisition scores")');
    await page.waitForFunction(() => !document.body.textContent.includes('Loading…'));
    out.round.histogram = await page.locator('svg[aria-label="Acquisition scores"]').count() > 0;
    await shot(page, 'run');
    await page.goto(`${cfg.base}/projects/${cfg.round_project}?tab=evaluation`);
    await page.waitForSelector('figure.chart svg');
    out.round.curve_points = await page.locator('figure.chart svg circle').count();
    for (const tab of ['setup', 'raters', 'quality', 'evaluation']) {
      await page.goto(`${cfg.base}/projects/${cfg.round_project}?tab=${tab}`);
      await page.waitForSelector('main[role=tabpanel] h2');
      await page.waitForFunction(() => !document.body.textContent.includes('Loading…'));
      await shot(page, tab);
      if (tab === 'setup') {
        // The prompt list: disable the last unused prompt shown; its row turns disabled.
        await page.waitForSelector('table.prompt-list tbody tr');
        const row = page.locator('table.prompt-list tbody tr:has(button:has-text("Delete"))').last();
        const text = await row.locator('td.prompt-text').getAttribute('title');
        await row.locator('button:has-text("Disable")').click();
        await page.waitForSelector('table.prompt-list tbody tr.disabled');
        out.prompt_disabled = text;
      }
      if (tab === 'raters') {
        // Tables export as CSV, made in the browser.
        const [download] = await Promise.all([page.waitForEvent('download'), page.click('button.export')]);
        const text = fs.readFileSync(await download.path(), 'utf8');
        out.raters_csv = { name: download.suggestedFilename(), text };
      }
    }
  }

  // 3. A human win-rate check: the admin sends an evaluation to one rater, who labels it.
  {
    const { page } = admin;
    await page.goto(`${cfg.base}/projects/${cfg.round_project}?tab=evaluation`);
    await page.waitForSelector('select[name=check-evaluation] option', { state: 'attached' });
    await page.check(`input[name=check-rater][value="${cfg.check.rater_id}"]`);
    await page.fill('input[name=check-pairs]', String(cfg.check.pairs));
    await page.click('text=Send to raters');
    await page.waitForSelector('p.ok:has-text("Sent")');
    const r = await newPage('rate-check');
    await r.page.goto(`${cfg.base}/rate#token=${cfg.check.token}`);
    await waitReady(r.page);
    const keys = ['1', '2', '1', 't', '1', '2', '1', '1'];
    const given = [];
    for (let i = 0; i < cfg.check.pairs; i++) given.push([await answer(r.page, keys[i % keys.length]), keys[i % keys.length]]);
    await r.context.close();
    await page.reload();
    await page.waitForSelector('table.checks td.human-rate');
    await page.waitForFunction(() => !document.body.textContent.includes('Loading…'));
    out.check = {
      given,
      human: await page.textContent('table.checks td.human-rate'),
      judge: await page.textContent('table.checks td.judge-rate'),
    };
    await shot(page, 'evaluation-check');
    await admin.context.close();
  }
} catch (e) {
  out.failure = String(e && e.stack || e);
} finally {
  await browser.close();
  console.log('RESULT ' + JSON.stringify(out));
}
