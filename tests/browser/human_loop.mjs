// The human-in-the-loop cycle in the browser (a part of run.mjs, kept in its own file): a
// project labelled by people with auto-continue on. Two raters open their pages before any
// round (they see "no pairs yet" and the page asks again by itself), the admin starts round 1
// from the stepper's one button, the raters label the whole batch, and the next batch reaches
// their pages with nobody clicking anything (the server trains, evaluates and acquires by
// itself). Then a rater on a phone whose save reaches the server but whose answer is lost sees
// the offline banner, and the save is sent again (stored once) when the network answers again. The Rust side (tests/tests/browser.rs) checks
// the database: a checkpoint and an evaluation of round 1, round 2 acquired by a `continue`
// job nobody started.

/// Follows the stepper (`.cycle-state[data-step]`) and the rater pages' empty states
/// (`.done-state[data-status]`, or `pair` while a pair is shown) in the background, recording
/// every change seen.
function recorder(page, selector, attr, into) {
  let on = true;
  (async () => {
    while (on) {
      try {
        const v = await page.evaluate(([s, a]) => document.querySelector(s)?.getAttribute(a)
          ?? (document.querySelector('section.pair[data-pair]') ? 'pair' : null), [selector, attr]);
        if (v && into[into.length - 1] !== v) into.push(v);
      } catch { /* the page is navigating */ }
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  return () => { on = false; };
}

export async function humanLoop({ cfg, out, newPage, shot, answer }) {
  const h = cfg.human;
  const seen = { steps: [], empty: [[], []], pairs: [[], []], round2_pair: null, stalled: {} };
  out.human = seen;
  const pairOf = (page) => page.evaluate(() => document.querySelector('section.pair')?.dataset.pair ?? null);
  const labelled = (page) => page.waitForFunction(() => document.querySelector('.done-state') || (
    document.querySelector('section.pair[data-pair]') && !document.querySelector('.choices button[disabled]')));

  // 1. Before any round both raters' pages say there is nothing yet, and keep asking.
  const raters = [];
  for (const [i, token] of h.raters.entries()) {
    const r = await newPage(`human-rater-${i + 1}`);
    await r.page.goto(`${cfg.base}/rate#token=${token}`);
    await r.page.waitForSelector('.done-state[data-status=nothing_yet]');
    r.stop = recorder(r.page, '.done-state', 'data-status', seen.empty[i]);
    raters.push(r);
  }
  await shot(raters[0].page, 'rate-nothing-yet');

  // 2. The stepper: no rounds yet, and the next action is to start one.
  const admin = await newPage('human-admin');
  await admin.page.goto(`${cfg.base}/projects/${h.project}?tab=run#admin=${cfg.admin}`);
  await admin.page.waitForSelector('.cycle-state[data-step=none] button.next-action[data-kind=round]');
  const stopSteps = recorder(admin.page, '.cycle-state', 'data-step', seen.steps);
  await shot(admin.page, 'run-stepper-start');
  await admin.page.click('button.next-action');
  await admin.page.waitForSelector('.cycle-state[data-step=labelling] .raters-line');
  await shot(admin.page, 'run-stepper-raters');

  // 3. The raters' pages find the batch by themselves, and label all of it.
  for (const r of raters) {
    await r.page.waitForSelector('section.pair[data-pair]', { timeout: 90_000 });
    await labelled(r.page);
  }
  for (const [i, r] of raters.entries()) {
    for (;;) {
      const pair = await pairOf(r.page);
      if (!pair || await r.page.$('.done-state')) break;
      seen.pairs[i].push(await answer(r.page, '1'));
    }
    // The state the last answer left the page in (the recorder may not have looked yet).
    const status = await r.page.getAttribute('.done-state', 'data-status');
    if (status && seen.empty[i][seen.empty[i].length - 1] !== status) seen.empty[i].push(status);
  }
  await shot(raters[0].page, 'rate-next-batch-coming');
  // The second rater leaves; round 2's other pair is for the rater on a phone below.
  raters[1].stop();
  await raters[1].context.close();
  // The admin sees the cycle go on: complete, then training, evaluating, and round 2 with
  // the raters, with nobody clicking.
  await admin.page.waitForFunction(() => document.querySelector('.cycle-state[data-step=labelling] h2')?.textContent === 'Round 2',
    null, { timeout: 120_000 });
  await shot(admin.page, 'run-stepper-round-2');

  // 4. Round 2 reaches a rater's open page on its own.
  const first = raters[0].page;
  await first.waitForSelector('section.pair[data-pair]', { timeout: 60_000 });
  seen.round2_pair = await pairOf(first);
  stopSteps();
  raters[0].stop();

  // 5. A rater on a phone whose save stalls: the answer stays marked "saving…", and after the
  // client's timeout the offline banner says the answer is being sent again; it then goes
  // through once the server answers.
  const phone = await newPage('human-phone', { width: 390, height: 844 }, { hasTouch: true, isMobile: true });
  await phone.page.goto(`${cfg.base}/rate#token=${h.phone_token}`);
  await phone.page.waitForSelector('section.pair[data-pair]', { timeout: 60_000 });
  await labelled(phone.page);
  seen.stalled.labels = { top: await phone.page.isVisible('.side h2 .narrow'), left: await phone.page.isVisible('.side h2 .wide'),
    // A touch screen has no keys to hint at.
    key_hints: await phone.page.isVisible('.choices kbd') };
  const stalledPair = await pairOf(phone.page);
  let held = 0;
  // The request reaches the server (the label is stored), but its answer never reaches the
  // page: the page times out and sends it again, and the server must not count it twice.
  await phone.page.route('**/api/rate/labels', async (route) => {
    held += 1;
    try { await route.fetch(); } catch { /* the page gave up on it first */ }
  });
  await phone.page.click('.choices button.primary >> nth=0');
  await phone.page.waitForSelector('.choices button.chosen .saving');
  await shot(phone.page, 'rate-phone-saving');
  await phone.page.waitForSelector('.banner.offline', { timeout: 30_000 });
  seen.stalled.banner = await phone.page.textContent('.banner.offline');
  await shot(phone.page, 'rate-phone-stalled');
  // The page sends it again (and that one too is stored no second time), then the network heals.
  for (const until = Date.now() + 30_000; held < 2 && Date.now() < until;) await new Promise((r) => setTimeout(r, 100));
  await phone.page.unroute('**/api/rate/labels');
  await phone.page.waitForFunction((p) => !document.querySelector('.banner.offline')
    && document.querySelector('section.pair')?.dataset.pair !== p, stalledPair, { timeout: 60_000 });
  seen.stalled.pair = stalledPair;
  seen.stalled.held = held;
  await phone.context.close();
  await raters[0].context.close();
  await admin.context.close();
}
