// The dashboard in Debian's chromium, driven by playwright-core, against a running `rtaas serve`
// that tests/suites/dashboard.sh started (it passes the URL, a key and the ids it created).
// Prints TAP lines ("ok - dashboard: ..." / "not ok - dashboard: ...") and exits 1 on a failure.
//
// env: DASH_URL, DASH_KEY, DASH_DATASET (ds_...), DASH_BACKBONE (bb_..., ready),
//      DASH_OUT (screenshots and downloads), DASH_CHROMIUM (default /usr/bin/chromium)
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { chromium } = require('playwright-core');

const URL_ = process.env.DASH_URL;
const KEY = process.env.DASH_KEY;
const DATASET = process.env.DASH_DATASET;
const BACKBONE = process.env.DASH_BACKBONE;
const OUT = process.env.DASH_OUT || path.join(process.cwd(), 'dashboard-out');
const CHROMIUM = process.env.DASH_CHROMIUM || '/usr/bin/chromium';
const PHASES = ['load', 'features', 'train', 'eval', 'gradients'];

let fails = 0;
function check(cond, desc, ...detail) {
  if (cond) {
    console.log(`ok - dashboard: ${desc}`);
  } else {
    fails++;
    console.log(`not ok - dashboard: ${desc}`);
    for (const d of detail) for (const line of String(d).split('\n')) console.log(`#   ${line}`);
  }
  return !!cond;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const sha = (buf) => crypto.createHash('sha256').update(buf).digest('hex');
const pctText = (v) => (v * 100).toFixed(2) + ' %';

async function api(p, init = {}) {
  const res = await fetch(URL_ + p, {
    ...init,
    headers: { Authorization: `Bearer ${KEY}`, ...(init.json ? { 'Content-Type': 'application/json' } : {}), ...(init.headers || {}) },
    body: init.json ? JSON.stringify(init.json) : init.body,
  });
  const buf = Buffer.from(await res.arrayBuffer());
  let json = null;
  try { json = JSON.parse(buf.toString('utf8')); } catch (_) { /* binary */ }
  return { status: res.status, headers: res.headers, buf, json };
}

async function waitJob(id, seconds) {
  const end = Date.now() + seconds * 1000;
  for (;;) {
    const r = await api(`/v1/transfers/${id}`);
    if (r.json && ['succeeded', 'failed', 'cancelled'].includes(r.json.status)) return r.json;
    if (Date.now() > end) return r.json;
    await sleep(300);
  }
}

async function main() {
  fs.mkdirSync(OUT, { recursive: true });
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--disable-default-apps', '--no-first-run', '--disable-gpu'],
  });
  check(true, `chromium ${browser.version()} starts`);
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);

  // everything the page does, for the checks at the end
  const pageErrors = [];
  const consoleErrors = [];
  const foreign = [];
  const origin = new URL(URL_).origin;
  page.on('pageerror', (e) => pageErrors.push(e.message));
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('request', (r) => {
    const u = r.url();
    if (!u.startsWith(origin + '/') && !u.startsWith('blob:') && !u.startsWith('data:')) foreign.push(u);
  });

  try {
    await run(page);
  } catch (e) {
    check(false, 'the browser scenario runs to its end', e.stack || e);
    await page.screenshot({ path: path.join(OUT, 'failure.png'), fullPage: true }).catch(() => {});
  }

  // failures to load a resource are the API's expected 401, 404 and 422 answers; anything else
  // (a script error, a refused inline style or script: a CSP violation) is a bug
  const unexpected = consoleErrors.filter((t) => !/^Failed to load resource: the server responded with a status of (401|404|422)/.test(t));
  check(pageErrors.length === 0, 'no uncaught script errors', ...pageErrors);
  check(unexpected.length === 0, 'no console errors (CSP violations included)', ...unexpected);
  check(foreign.length === 0, 'no request leaves the host', ...foreign.slice(0, 10));
  await browser.close();
}

async function run(page) {
  // ---- a wrong key ----------------------------------------------------------------------
  await page.goto(URL_ + '/');
  await page.waitForSelector('#key-form', { state: 'visible' });
  check(await page.isVisible('#key-input'), 'the page asks for a key first');
  await page.fill('#key-input', 'rtaas_thisisnotakey000000000000');
  await page.click('#key-form button[type=submit]');
  await page.waitForSelector('#key-error', { state: 'visible' });
  const wrong = (await page.textContent('#key-error')).trim();
  check(/refused/i.test(wrong) && /401/.test(wrong), 'a wrong key shows a clear message', `message: ${wrong}`);
  check(await page.evaluate(() => sessionStorage.getItem('rtaas.key')) === null, 'a wrong key is not kept');
  await page.screenshot({ path: path.join(OUT, 'wrong-key.png') });

  // ---- the right key --------------------------------------------------------------------
  await page.fill('#key-input', KEY);
  await page.click('#key-form button[type=submit]');
  await page.waitForSelector(`#datasets tr[data-id="${DATASET}"]`);
  check(await page.evaluate(() => sessionStorage.getItem('rtaas.key')) === KEY, 'the key is kept in session storage');
  check(await page.isHidden('#key-view'), 'the key prompt goes away');
  const bbStatus = await page.getAttribute(`#backbones tr[data-id="${BACKBONE}"] .badge`, 'data-status');
  check(bbStatus === 'ready', 'the backbone is listed, with a "ready" badge', `badge: ${bbStatus}`);

  // a transfer created through the API appears in the list without a reload
  await page.evaluate(() => { window.__noReload = 1; });
  const spec = {
    name: 'lwf-ui', backbone: BACKBONE, method: 'lwf', seed: 1,
    dataset: { id: DATASET, per_class: 100 }, test: { id: DATASET },
    params: { epochs: 36, batch_size: 16, lambda_d: 0.01 },
    eval: { eps: 0.1, examples: 60, gradient_maps: 8, attacks: [{ kind: 'pgd', steps: 5 }, { kind: 'cw', steps: 5 }] },
  };
  const created = await api('/v1/transfers', { method: 'POST', json: spec });
  check(created.status === 202, 'POST /v1/transfers: 202', created.buf.toString().slice(0, 300));
  const job = created.json.id;
  await page.waitForSelector(`#transfers tr[data-id="${job}"]`, { timeout: 15000 });
  check(await page.evaluate(() => window.__noReload === 1), 'the new transfer appears in the list without a reload');
  const listStatus = await page.getAttribute(`#transfers tr[data-id="${job}"] .badge`, 'data-status');
  check(['queued', 'running'].includes(listStatus), 'it has a queued or running badge', `badge: ${listStatus}`);
  const rowBar = await page.$(`#transfers tr[data-id="${job}"] [role=progressbar]`);
  check(rowBar !== null, 'the list shows its progress bar');
  const samples = [];
  const statuses = [];
  const sampleBar = (sel) => page.evaluate((sel2) => {
    const bar = document.querySelector(sel2);
    return bar && { phase: bar.dataset.phase, value: Number(bar.getAttribute('aria-valuenow')), done: Number(bar.dataset.done), text: bar.textContent };
  }, sel);
  const first = await sampleBar(`#transfers tr[data-id="${job}"] [role=progressbar]`);
  if (first && first.phase) samples.push(first);
  await page.screenshot({ path: path.join(OUT, 'list-running.png'), fullPage: true });

  // ---- the transfer page: the progress bar advances, the job succeeds --------------------
  await page.click(`#transfers tr[data-id="${job}"] a[href="#/transfers/${job}"]`);
  await page.waitForSelector('#job-status .badge');
  const end = Date.now() + 120000;
  let status = '';
  while (Date.now() < end) {
    const sample = await page.evaluate(() => {
      const b = document.querySelector('#job-status .badge');
      const bar = document.querySelector('#job-progress [role=progressbar]');
      return {
        status: b ? b.dataset.status : '',
        phase: bar ? bar.dataset.phase : null,
        value: bar ? Number(bar.getAttribute('aria-valuenow')) : null,
        done: bar ? Number(bar.dataset.done) : null,
        text: bar ? bar.textContent : null,
      };
    });
    status = sample.status;
    statuses.push(`${sample.status}:${sample.text}`);
    if (sample.phase) samples.push(sample);
    if (['succeeded', 'failed', 'cancelled'].includes(status)) break;
    await sleep(150);
  }
  const distinct = [...new Map(samples.map((x) => [`${x.phase}:${x.done}`, x])).values()];
  let advanced = false;
  for (let i = 1; i < distinct.length; i++) {
    const a = distinct[i - 1], b = distinct[i];
    const pa = PHASES.indexOf(a.phase), pb = PHASES.indexOf(b.phase);
    if (pb > pa || (pb === pa && b.value > a.value)) advanced = true;
  }
  check(advanced, 'the progress bar advances while the job runs',
    `seen: ${distinct.map((x) => x.text).join(' | ') || 'no progress bar'}`,
    `samples: ${samples.length}; statuses: ${[...new Set(statuses)].join(', ')}`);
  check(distinct.some((x) => /%/.test(x.text)), 'the bar shows the phase and a percentage', distinct.map((x) => x.text).join(' | '));
  check(status === 'succeeded', 'the job reaches "succeeded" on the page', `last status: ${status}`);
  if (status !== 'succeeded') {
    const j = await api(`/v1/transfers/${job}`);
    throw new Error(`job ${job} did not succeed: ${j.buf.toString().slice(0, 500)}`);
  }

  // ---- the report ------------------------------------------------------------------------
  await page.waitForSelector('#report-table');
  const rep = (await api(`/v1/transfers/${job}/report`)).json;
  const ev = rep.evaluation;
  const want = [['clean', ev.clean.accuracy, ev.clean.correct]]
    .concat(ev.attacks.map((a) => [`attack:${a.name}`, a.robust_accuracy, a.correct]))
    .concat(ev.worst_case ? [['worst', ev.worst_case.robust_accuracy, ev.worst_case.correct]] : []);
  const got = await page.$$eval('#report-table tbody tr', (trs) => trs.map((tr) => ({
    row: tr.dataset.row,
    text: tr.querySelector('[data-col=accuracy]').textContent,
    value: tr.querySelector('[data-col=accuracy]').dataset.value,
    correct: tr.querySelector('[data-col=correct]').textContent,
  })));
  const bad = [];
  if (got.length !== want.length) bad.push(`rows: ${got.map((g) => g.row).join(', ')}; want ${want.map((w) => w[0]).join(', ')}`);
  for (const [row, v, correct] of want) {
    const g = got.find((x) => x.row === row);
    if (!g) { bad.push(`no row ${row}`); continue; }
    if (g.text !== pctText(v) || Number(g.value) !== v) bad.push(`${row}: page ${g.text} (${g.value}), API ${v}`);
    if (correct !== undefined && g.correct !== `${correct} / ${ev.examples}`) bad.push(`${row}: page correct ${g.correct}, API ${correct}/${ev.examples}`);
  }
  check(bad.length === 0, `the report table shows the numbers of GET .../report (${want.length} rows: clean, ${ev.attacks.length} attacks, worst case)`, ...bad);

  const perClass = await page.$$eval('#perclass-table tbody tr', (trs) => trs.map((tr) =>
    [...tr.querySelectorAll('td')].map((td) => ({ col: td.dataset.col, text: td.textContent, value: td.dataset.value }))));
  const pcBad = [];
  const cols = [['clean', ev.clean]].concat(ev.attacks.map((a) => [a.name, a])).concat(ev.worst_case ? [['worst case', ev.worst_case]] : []);
  const nclass = ev.clean.per_class.length;
  if (perClass.length !== nclass) pcBad.push(`${perClass.length} rows, want ${nclass}`);
  perClass.forEach((cells, c) => cols.forEach(([name, r], k) => {
    const cell = cells[k];
    const v = r.per_class[c];
    if (!cell || cell.col !== name || Number(cell.value) !== v || cell.text !== pctText(v))
      pcBad.push(`class ${c} ${name}: page ${cell && cell.text}, API ${v}`);
  }));
  check(pcBad.length === 0, `the per-class table equals the report (${nclass} classes × ${cols.length} columns)`, ...pcBad);

  // training curves: one point per epoch, at the report's values
  const epochs = rep.training.epochs || [];
  const loss = await page.$$eval('#curves circle[data-series=loss]', (cs) => cs.map((c) => Number(c.dataset.value)));
  const accs = await page.$$eval('#curves circle[data-series=accuracy]', (cs) => cs.map((c) => Number(c.dataset.value)));
  check(epochs.length > 0 && loss.length === epochs.length && loss.every((v, i) => v === epochs[i].loss) &&
    accs.every((v, i) => v === epochs[i].accuracy) && (await page.$('#curves polyline[data-series=loss]')) !== null,
  `the training curves plot the report's ${epochs.length} epochs (loss and accuracy)`, `page loss: ${loss.join(', ')}`);
  const phases = await page.$$eval('#timings-table tbody tr[data-phase]', (trs) => trs.map((t) => t.dataset.phase));
  const timingKeys = Object.keys(rep.timings || {});
  check(timingKeys.length > 0 && timingKeys.every((k) => phases.includes(k)), 'the timings table lists every phase of the report',
    `page: ${phases.join(', ')}; report: ${timingKeys.join(', ')}`);

  // ---- the gradient gallery, every page ------------------------------------------------------
  const nmaps = rep.artifacts.filter((a) => /^gradients\/\d+\.png$/.test(a.name)).length;
  check(nmaps === spec.eval.gradient_maps, `the report lists ${spec.eval.gradient_maps} gradient maps`, `artifacts: ${nmaps}`);
  const seen = new Map();
  let pagesSeen = 0;
  for (let guard = 0; guard < 20; guard++) {
    await page.waitForFunction(() => {
      const g = document.querySelector('#gallery');
      return g && !g.dataset.loading && g.querySelectorAll('img').length > 0;
    });
    pagesSeen++;
    const imgs = await page.$$eval('#gallery img', (xs) => xs.map((i) => ({
      index: Number(i.dataset.index), complete: i.complete, w: i.naturalWidth, h: i.naturalHeight, src: i.src,
    })));
    for (const im of imgs) seen.set(im.index, im);
    if (await page.isDisabled('#gallery-next')) break;
    if (pagesSeen === 1) await page.screenshot({ path: path.join(OUT, 'transfer.png'), fullPage: true });
    await page.click('#gallery-next');
  }
  if (pagesSeen === 1) await page.screenshot({ path: path.join(OUT, 'transfer.png'), fullPage: true });
  const imgs = [...seen.values()];
  check(pagesSeen === Math.ceil(nmaps / 6) && pagesSeen > 1, `the gallery pages through the maps (${pagesSeen} pages)`);
  check(imgs.length === nmaps && imgs.every((i, k) => i.index === k || seen.has(k)),
    `the gallery shows every example 0..${nmaps - 1}`, `seen: ${[...seen.keys()].sort((a, b) => a - b).join(',')}`);
  const notLoaded = imgs.filter((i) => !(i.complete && i.w > 0 && i.h > 0));
  check(imgs.length > 0 && notLoaded.length === 0, `every gradient image has loaded (naturalWidth > 0): ${imgs.length} images`,
    ...notLoaded.map((i) => `example ${i.index}: complete ${i.complete} ${i.w}x${i.h}`));
  check(imgs.every((i) => i.src.startsWith('blob:')), 'the images are blobs fetched with the key');
  const png = await api(`/v1/transfers/${job}/gradients?i=0`);
  const pw = png.buf.readUInt32BE(16), ph = png.buf.readUInt32BE(20);
  const im0 = seen.get(0);
  check(im0 && im0.w === pw && im0.h === ph, `example 0 has the PNG's size (${pw}x${ph}: input | gradient | adversarial)`,
    `page: ${im0 && im0.w}x${im0 && im0.h}`);
  check((await api(`/v1/transfers/${job}/gradients?i=${nmaps}`)).status === 404, 'GET .../gradients?i=N past the last map: 404');
  await page.click('#gallery-prev');
  await page.waitForFunction(() => document.querySelector('#gallery img[data-index="0"]'));

  // ---- downloads -----------------------------------------------------------------------------
  for (const [button, apiPath, what] of [['#download-head', `/v1/transfers/${job}/head`, 'head'],
    ['#download-report', `/v1/transfers/${job}/report`, 'report JSON']]) {
    const [dl] = await Promise.all([page.waitForEvent('download'), page.click(button)]);
    const file = path.join(OUT, `download-${dl.suggestedFilename()}`);
    await dl.saveAs(file);
    const mine = fs.readFileSync(file);
    const theirs = (await api(apiPath)).buf;
    check(mine.length > 0 && sha(mine) === sha(theirs), `the ${what} download has the API's bytes (${mine.length} bytes, ${dl.suggestedFilename()})`,
      `page: ${mine.length} bytes ${sha(mine)}`, `API:  ${theirs.length} bytes ${sha(theirs)}`);
    fs.rmSync(file, { force: true });
  }

  // ---- the form: the API's validation errors next to the field ----------------------------
  await page.goto(URL_ + '/#/new');
  await page.waitForSelector('#transfer-form');
  const submitAndError = async () => {
    const [resp] = await Promise.all([
      page.waitForResponse((r) => r.url() === `${URL_}/v1/transfers` && r.request().method() === 'POST'),
      page.click('#submit-transfer'),
    ]);
    const body = await resp.json().catch(() => null);
    await page.waitForSelector('.field-error', { state: 'visible' });
    const shown = await page.$$eval('.field-error', (ps) => ps.map((p) => ({
      text: p.textContent, for: p.dataset.errorFor,
      controls: [...p.closest('.field, fieldset, [data-field]').querySelectorAll('input, select')].map((i) => i.name),
    })));
    return { status: resp.status(), error: body && body.error, shown };
  };
  await page.fill('input[name=name]', 'form-bad');
  await page.selectOption('select[name=backbone]', BACKBONE);
  await page.fill('input[name=eps]', '-1');
  let r = await submitAndError();
  check(r.status >= 400 && r.status < 500 && r.error && r.error.field === 'eval.eps', 'eps -1: the API refuses it (eval.eps)',
    JSON.stringify(r));
  check(r.shown.length === 1 && r.error && r.shown[0].text === r.error.message && r.shown[0].for === 'eval.eps' &&
    r.shown[0].controls.includes('eps'), 'eps -1: the API\'s message shows next to the eps field', JSON.stringify(r.shown));
  check((await page.textContent('#form-error')).includes(r.error ? r.error.message : '\u0000'), 'and in the form\'s error line');
  await page.screenshot({ path: path.join(OUT, 'form-error.png'), fullPage: true });

  await page.fill('input[name=eps]', '0.1');
  await page.fill('input[name=classes]', '0, 7');
  r = await submitAndError();
  check(r.error && /^dataset\.classes/.test(r.error.field || '') && r.shown.length === 1 &&
    r.shown[0].text === r.error.message && r.shown[0].controls.includes('classes'),
  `a class the dataset lacks: the message shows next to the classes field (${r.error && r.error.field})`, JSON.stringify(r));

  // a valid form starts a transfer and opens its page
  await page.fill('input[name=classes]', '');
  await page.fill('input[name=name]', 'linear-ui');
  await page.fill('input[name=epochs]', '2');
  await page.fill('input[name=batch_size]', '16');
  await page.fill('input[name=examples]', '30');
  await page.fill('input[name=gradient_maps]', '2');
  await page.fill('input[name="steps-pgd"]', '3');
  await page.uncheck('#atk-cw');
  await page.click('#submit-transfer');
  await page.waitForURL(/#\/transfers\/job_/);
  const job2 = page.url().split('/').pop();
  check(/^job_/.test(job2) && (await page.$$('.field-error')).length === 0, 'a valid form starts a transfer and opens its page', page.url());
  const j2 = await api(`/v1/transfers/${job2}`);
  check(j2.json && j2.json.method === 'linear' && j2.json.name === 'linear-ui', 'the API has the transfer the form sent', j2.buf.toString().slice(0, 300));
  await page.waitForSelector('#job-status .badge[data-status=succeeded]', { timeout: 90000 });
  await page.waitForSelector('#report-table');

  // ---- the comparison ----------------------------------------------------------------------
  await page.goto(URL_ + '/#/');
  await page.waitForSelector(`#transfers tr[data-id="${job2}"] .badge[data-status=succeeded]`);
  await page.check(`#transfers input[data-pick="${job}"]`);
  await page.check(`#transfers input[data-pick="${job2}"]`);
  await page.screenshot({ path: path.join(OUT, 'list.png'), fullPage: true });
  await page.click('#compare-picked');
  await page.waitForSelector('#compare-plot');
  const cmp = await page.$$eval('#compare-table tbody tr', (trs) => trs.map((tr) => ({
    id: tr.dataset.id,
    cells: Object.fromEntries([...tr.querySelectorAll('td[data-col]')].map((td) => [td.dataset.col, { text: td.textContent, value: td.dataset.value }])),
  })));
  const cmpBad = [];
  for (const id of [job, job2]) {
    const e = (await api(`/v1/transfers/${id}/report`)).json.evaluation;
    const row = cmp.find((x) => x.id === id);
    if (!row) { cmpBad.push(`no row for ${id}`); continue; }
    const expect = { clean: e.clean.accuracy, worst: e.worst_case.robust_accuracy };
    for (const a of e.attacks) expect[a.name] = a.robust_accuracy;
    for (const [col, v] of Object.entries(expect)) {
      const c = row.cells[col];
      if (!c || Number(c.value) !== v || c.text !== pctText(v)) cmpBad.push(`${id} ${col}: page ${c && c.text}, API ${v}`);
    }
  }
  check(cmp.length === 2 && cmpBad.length === 0, 'the comparison table shows clean and robust accuracy of both transfers', ...cmpBad);
  const bars = await page.$$eval('#compare-plot rect[data-kind]', (rs) => rs.map((r) => ({ id: r.dataset.id, kind: r.dataset.kind, value: Number(r.dataset.value), h: Number(r.getAttribute('height')) })));
  check(bars.length === 4 && bars.every((b) => b.h >= 0) &&
    bars.filter((b) => b.kind === 'clean').every((b) => cmp.find((x) => x.id === b.id).cells.clean.value == b.value),
  'the comparison plot has a clean and a robust bar per transfer', JSON.stringify(bars));
  await page.screenshot({ path: path.join(OUT, 'compare.png'), fullPage: true });

  // ---- a key that stops working sends the user back to the prompt, with the reason -----------
  await page.evaluate(() => sessionStorage.setItem('rtaas.key', 'rtaas_revokedrevokedrevoked0000'));
  await page.reload();
  await page.waitForSelector('#key-error', { state: 'visible' });
  const msg = (await page.textContent('#key-error')).trim();
  check(/401/.test(msg) && (await page.isVisible('#key-input')), 'a stored key the server refuses: back to the prompt with a clear message', msg);
}

main().then(() => process.exit(fails ? 1 : 0), (e) => {
  console.log(`not ok - dashboard: the browser test crashed`);
  console.log(String(e && e.stack || e).split('\n').map((l) => `#   ${l}`).join('\n'));
  process.exit(1);
});
