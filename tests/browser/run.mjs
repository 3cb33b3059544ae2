// The browser half of tests/tests/browser.rs: drives Debian's chromium through playwright-core
// against a server the Rust test started and filled, and reports what it did and saw as one
// JSON line (`RESULT {...}`). The Rust side checks that against the database, so this script
// asserts only what the page itself must show. Screenshots go to cfg.shots.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';
import { humanLoop } from './human_loop.mjs';

const cfg = JSON.parse(process.env.APL_BROWSER_CONFIG);
const TIMEOUT = 120_000;
const out = { errors: [], steps: [] };
let offline = false;
// Set while the test presents a wrong admin token on purpose: Chromium reports the 401 it gets.
let refusing = false;
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
    if (m.type() === 'error' && !(offline && m.text().includes('ERR_INTERNET_DISCONNECTED'))
      && !(refusing && m.text().includes('401'))) {
      out.errors.push(`${name}: console error: ${m.text()}`);
    }
  });
  page.on('pageerror', (e) => out.errors.push(`${name}: uncaught: ${e.message}`));
  page.on('response', (r) => {
    if (r.url().endsWith('_bg.wasm')) out.wasm = { url: new URL(r.url()).pathname, encoding: r.headers()['content-encoding'] ?? null };
    // The admin build's other wasm files (a dashboard tab's code, fetched when it is first
    // opened) are served gzipped too.
    else if (r.url().endsWith('.wasm') && r.status() === 200 && r.headers()['content-encoding'] !== 'gzip') {
      out.errors.push(`${name}: ${new URL(r.url()).pathname} not served gzipped`);
    }
    // A 4xx the test provokes on purpose is not an error of the page; 5xx always is.
    if (r.status() >= 500) out.errors.push(`${name}: ${r.status()} from ${r.url()}`);
  });
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(cfg.shots, `${name}.png`), fullPage: true });
}

async function newPage(name, viewport = { width: 1280, height: 900 }, device = {}) {
  const context = await browser.newContext({ viewport, ...device });
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
    // The job this click starts: the card whose id was not on the page before it.
    const before = await page.evaluate(() => [...document.querySelectorAll('.job[data-job]')].map((j) => j.dataset.job));
    await page.click('form button[type=submit]');
    const jobId = await (await page.waitForFunction((b) => [...document.querySelectorAll('.job[data-job]')]
      .map((j) => j.dataset.job).find((id) => !b.includes(id)), before)).jsonValue();
    const seen = new Set();
    const stages = new Set();
    let shotProgress = false;
    const deadline = Date.now() + TIMEOUT;
    for (;;) {
      const s = await page.evaluate((id) => {
        const j = document.querySelector(`.job[data-job="${id}"]`);
        return { state: j?.dataset.state, phase: j?.dataset.phase, stage: j?.dataset.stage, bar: !!j?.querySelector('progress'),
          text: j?.querySelector('p.muted')?.textContent };
      }, jobId);
      if (s.bar) seen.add('progress bar');
      if (s.state === 'running' && s.phase) seen.add(s.phase);
      // One bar and one time left for the whole job: "stage 3/4 · train · … · ~12 s left".
      if (s.state === 'running' && s.text?.startsWith('stage ')) stages.add(s.text.split(' · ').slice(0, 2).join(' · '));
      if (s.state === 'running' && / left/.test(s.text ?? '')) seen.add('time left');
      if (s.bar && s.state === 'running' && / left/.test(s.text ?? '') && !shotProgress) { await shot(page, 'run-progress'); shotProgress = true; }
      if (s.state === 'done' || s.state === 'failed') { out.round = { state: s.state, seen: [...seen], stages: [...stages] }; break; }
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
    // The evaluation tab: its evaluations fetched once per view, the starting model at 0 labels,
    // samples paged and filtered by outcome.
    const evalFetches = [];
    const countEvals = (r) => {
      if (/^\/api\/projects\/[^/]+\/evaluations$/.test(new URL(r.url()).pathname)) evalFetches.push(r.url());
    };
    page.on('request', countEvals);
    await page.goto(`${cfg.base}/projects/${cfg.round_project}?tab=evaluation`, { waitUntil: 'networkidle' });
    await page.waitForSelector('figure.chart svg');
    await page.waitForFunction(() => !document.body.textContent.includes('Loading…'));
    await page.waitForLoadState('networkidle');
    page.off('request', countEvals);
    out.round.curve_points = await page.locator('figure.chart svg[role=img] circle').count();
    {
      const start = page.locator('figure.chart svg[role=img] circle[data-x="0"]');
      const n = await start.count();
      out.evaluation = {
        fetches: evalFetches.length,
        start: n ? { count: n, mark: await start.first().getAttribute('data-mark'), title: await start.first().locator('title').textContent() } : null,
        legend: await page.locator('.legend .assumed-note').allTextContents(),
      };
      const items = page.locator('ol.samples > li');
      const status = () => page.textContent('.pager .page-status');
      const next = page.locator('.pager button[aria-label="Next page of samples"]');
      const prev = page.locator('.pager button[aria-label="Previous page of samples"]');
      const samples = {
        evaluation: await page.inputValue('select[name=samples-evaluation]'),
        pages: [await status()],
        shown: [await items.count()],
        first_prev_disabled: await prev.isDisabled(),
      };
      while (await next.isEnabled()) {
        const before = await status();
        await next.click();
        await page.waitForFunction((b) => document.querySelector('.pager .page-status')?.textContent !== b, before);
        samples.pages.push(await status());
        samples.shown.push(await items.count());
      }
      samples.last_next_disabled = await next.isDisabled();
      await page.click('.sample-filter button[data-show=wins]');
      await page.waitForSelector('.sample-filter button[data-show=wins][aria-pressed=true]');
      samples.wins = {
        label: await page.textContent('.sample-filter button[data-show=wins]'),
        status: await status(),
        classes: await items.evaluateAll((ls) => ls.map((l) => l.className)),
      };
      await shot(page, 'evaluation-wins');
      await page.click('.sample-filter button[data-show=all]');
      await page.waitForSelector('.sample-filter button[data-show=all][aria-pressed=true]');
      out.evaluation.samples = samples;
    }
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
  // 4. Admin pages: signing in on a page opened without the token, an invite link copied, a
  // phone's width, and the set-up form's guards (a new IMDB project's guidelines, the judge's
  // section, errors at their field, unsaved edits).
  {
    const { context, page } = await newPage('admin-pages');
    await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: cfg.base });
    await page.goto(`${cfg.base}/projects/${cfg.round_project}?tab=raters`);
    await page.waitForSelector('form.signin');
    const signin = {
      forms: await page.locator('form.signin').count(),
      errors: await page.locator('.error:not(:empty)').allTextContents(),
      tabs_hidden: await page.locator('nav.tabs').isHidden(),
    };
    await shot(page, 'signin');
    refusing = true;
    await page.fill('form.signin input[name=admin-token]', 'not-the-admin-token');
    await page.click('form.signin button[type=submit]');
    await page.waitForSelector('#signin-error:not(:empty)');
    signin.wrong = await page.textContent('#signin-error');
    refusing = false;
    await shot(page, 'signin-wrong');
    await page.fill('form.signin input[name=admin-token]', cfg.admin);
    await page.click('form.signin button[type=submit]');
    await page.waitForSelector('h2:has-text("Invite a rater")');
    await page.waitForSelector('table.raters');
    signin.after = {
      forms: await page.locator('form.signin').count(),
      stored: await page.evaluate((t) => localStorage.getItem('apl_admin_token') === t, cfg.admin),
    };
    out.signin = signin;

    // An invite: its link shown once, with a Copy button that puts it on the clipboard.
    await page.fill('input[name=rater-name]', 'Bo');
    await page.click('button:has-text("Create invite link")');
    await page.waitForSelector('.invite button.copy');
    await page.click('.invite button.copy');
    await page.waitForSelector('.invite .copy-state:has-text("Copied")');
    await page.waitForSelector('table.raters td:has-text("Bo")');
    out.invite = {
      link: await page.inputValue('.invite .invite-link'),
      clipboard: await page.evaluate(() => navigator.clipboard.readText()),
      states: await page.locator('table.raters tbody tr').evaluateAll((rows) => rows.map((r) =>
        [r.cells[0].textContent, r.querySelector('td.invite-state')?.dataset.invite ?? null])),
    };
    await shot(page, 'raters-invite');

    // A phone: tables scroll inside their own box, the tab bar on one line, the page never sideways.
    {
      const phone = await newPage('admin-phone', { width: 390, height: 844 });
      const p = phone.page;
      const settled = () => p.waitForFunction(() => !document.body.textContent.includes('Loading…'));
      const width = () => p.evaluate(() => document.documentElement.scrollWidth);
      // What sticks out past the screen (innermost first), so a failure names its culprit.
      const wide = () => p.evaluate(() => {
        const clipped = (e) => { for (let a = e.parentElement; a; a = a.parentElement) if (a.scrollWidth > a.clientWidth && getComputedStyle(a).overflowX !== 'visible') return true; return false; };
        return [...document.body.querySelectorAll('*')]
          .filter((e) => e.getBoundingClientRect().right > 391 && !clipped(e) && ![...e.children].some((c) => c.getBoundingClientRect().right > 391))
          .slice(0, 4).map((e) => {
            const chain = [];
            for (let a = e; a && a !== document.body; a = a.parentElement) chain.push(`${a.tagName.toLowerCase()}.${a.className}:${Math.round(a.getBoundingClientRect().width)}`);
            return chain.join(' < ');
          });
      });
      await p.goto(`${cfg.base}/projects/${cfg.round_project}?tab=raters#admin=${cfg.admin}`);
      await p.waitForSelector('table.raters');
      await settled();
      const seen = {
        raters: await width(),
        tab_rows: await p.evaluate(() => new Set([...document.querySelectorAll('nav.tabs .tab')].map((t) => t.offsetTop)).size),
        table_scrolls: await p.evaluate(() => { const w = document.querySelector('.table-wrap'); return w.scrollWidth > w.clientWidth; }),
      };
      await shot(p, 'raters-phone');
      for (const tab of ['setup', 'quality', 'run', 'evaluation']) {
        await p.click(`#tab-${tab}`);
        await p.waitForSelector(`#tab-${tab}[aria-selected=true]`);
        await p.waitForSelector('main[role=tabpanel] h2');
        await settled();
        seen[tab] = await width();
        if (seen[tab] > 390) seen[`${tab}_wide`] = await wide();
      }
      await shot(p, 'evaluation-phone');
      await p.goto(`${cfg.base}/`);
      await p.waitForSelector('table a');
      seen.projects = await width();
      out.phone = seen;
      await phone.context.close();
    }

    // A new IMDB project: raters are asked about sentiment, and no judge is assumed.
    await page.goto(`${cfg.base}/`);
    await page.fill('input[name=project-name]', cfg.imdb_project);
    await page.selectOption('select[name=project-task]', 'imdb');
    await Promise.all([page.waitForURL(/\/projects\/[^/?]+\?tab=setup/),
      page.click('section:has(h2:has-text("New project")) button[type=submit]')]);
    const guidelines = 'textarea[name="rating.guidelines"]';
    await page.waitForFunction((sel) => document.querySelector(sel)?.value, guidelines);
    const setup = {
      guidelines: await page.inputValue(guidelines),
      judge_hidden: await page.locator('fieldset[name=section-judge]').isHidden(),
    };
    const labeller = 'select[name="loop_settings.labeller"]';
    const url = 'input[name="loop_settings.judge.base_url"]';
    await page.selectOption(labeller, 'judge');
    await page.waitForSelector('fieldset[name=section-judge]', { state: 'visible' });
    setup.judge_url = {
      value: await page.inputValue(url),
      invalid: await page.getAttribute(url, 'aria-invalid'),
      message: await page.textContent('#loop_settings-judge-base_url-error'),
    };
    await shot(page, 'setup-judge');
    // A wrong number is named at its field, and saving goes there.
    const pairs = 'input[name="loop_settings.pairs_per_round"]';
    await page.fill(pairs, 'lots');
    await page.press(pairs, 'Tab');
    await page.waitForSelector(`${pairs}[aria-invalid=true]`);
    await page.click('button:has-text("Save configuration")');
    await page.waitForSelector('p.error:has-text("Not saved")');
    setup.inline = {
      message: await page.textContent('#loop_settings-pairs_per_round-error'),
      described: await page.getAttribute(pairs, 'aria-describedby'),
      save: await page.textContent('p.error:has-text("Not saved")'),
      focused: await page.evaluate(() => document.activeElement?.getAttribute('name')),
    };
    await shot(page, 'setup-errors');
    // Corrected, and back to human raters: the edits are marked as not saved.
    await page.fill(pairs, '32');
    await page.press(pairs, 'Tab');
    await page.selectOption(labeller, 'raters');
    await page.waitForSelector('[data-testid=unsaved]');
    const beforeunload = () => page.evaluate(() => {
      const e = new Event('beforeunload', { cancelable: true });
      window.dispatchEvent(e);
      return e.defaultPrevented;
    });
    setup.unsaved = { tab: await page.textContent('#tab-setup'), beforeunload: await beforeunload() };
    await shot(page, 'setup-unsaved');
    // Another tab asks first; declined, the edits stay.
    const dialogs = [];
    page.on('dialog', (d) => { dialogs.push({ type: d.type(), message: d.message() }); d.dismiss(); });
    await page.click('#tab-run');
    await page.waitForFunction(() => true);
    setup.unsaved.stayed = await page.getAttribute('#tab-setup', 'aria-selected') === 'true'
      && await page.inputValue(pairs) === '32';
    // Saved: no mark, and tabs change without asking.
    await page.click('button:has-text("Save configuration")');
    await page.waitForSelector('p.ok:has-text("Saved.")');
    setup.saved = {
      marks: await page.locator('[data-testid=unsaved], #tab-setup .unsaved-mark').count(),
      beforeunload: await beforeunload(),
    };
    await page.click('#tab-run');
    await page.waitForSelector('#tab-run[aria-selected=true]');
    setup.dialogs = dialogs;
    out.setup = setup;
    await context.close();
  }

  // 5. The human-in-the-loop cycle: raters label a batch, the next one arrives by itself.
  await humanLoop({ cfg, out, newPage, shot, answer });
} catch (e) {
  out.failure = String(e && e.stack || e);
} finally {
  await browser.close();
  console.log('RESULT ' + JSON.stringify(out));
}
