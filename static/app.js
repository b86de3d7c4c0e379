// The rtaas dashboard: a single page over the public REST API (/v1), with hash routes for the
// overview, the new-transfer form, one transfer's report and the comparison of several.
'use strict';

(() => {
  const KEY_STORE = 'rtaas.key';
  const POLL_ACTIVE_MS = 1000; // while something runs
  const POLL_IDLE_MS = 3000; // a job started elsewhere shows up within this
  const GALLERY_PAGE = 6;
  const FINAL = new Set(['succeeded', 'failed', 'cancelled']);
  const ATTACKS = [
    { kind: 'pgd', label: 'PGD (l∞, CE)', steps: 20, on: true },
    { kind: 'cw', label: 'CW (margin)', steps: 20, on: true },
    { kind: 'fgsm', label: 'FGSM', steps: null, on: false },
    { kind: 'apgd-ce', label: 'APGD-CE', steps: 20, on: false },
    { kind: 'apgd-dlr', label: 'APGD-DLR', steps: 20, on: false },
  ];
  const PHASES = ['load', 'features', 'train', 'eval', 'gradients'];

  let key = sessionStorage.getItem(KEY_STORE) || '';
  let view = { token: 0, timer: null, urls: [] }; // the current view: its poll timer and object URLs
  const picked = new Set(); // transfers chosen for the comparison

  // ---- DOM ---------------------------------------------------------------------------------

  // h('tr', {class: 'x', 'data-id': id, onclick: fn}, child, 'text', [more]): children are
  // nodes or text (never parsed as HTML); null and false are skipped.
  function build(el, attrs, kids) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'text') el.textContent = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }
  const h = (tag, attrs, ...kids) => build(document.createElement(tag), attrs, kids);
  const SVG = 'http://www.w3.org/2000/svg';
  const s = (tag, attrs, ...kids) => build(document.createElementNS(SVG, tag), attrs, kids);
  const put = (el, ...kids) => { el.replaceChildren(); return build(el, null, kids); };
  const $ = (sel, root = document) => root.querySelector(sel);
  const main = () => $('#main');

  function banner(msg) {
    const b = $('#banner');
    b.textContent = msg || '';
    b.hidden = !msg;
  }

  // ---- formatting --------------------------------------------------------------------------

  const pct = (v) => (typeof v === 'number' && Number.isFinite(v) ? (v * 100).toFixed(2) + ' %' : '—');
  const num = (v, d = 3) => (typeof v === 'number' && Number.isFinite(v) ? String(+v.toFixed(d)) : '—');
  function when(t) {
    if (!t) return '—';
    const d = new Date(t);
    return Number.isNaN(d.getTime()) ? t : d.toLocaleString();
  }
  function duration(sec) {
    if (typeof sec !== 'number' || !Number.isFinite(sec)) return '—';
    if (sec < 1) return (sec * 1000).toFixed(0) + ' ms';
    if (sec < 90) return sec.toFixed(1) + ' s';
    const m = Math.floor(sec / 60);
    if (m < 90) return `${m} min ${Math.round(sec - 60 * m)} s`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  }
  function bytes(n) {
    if (typeof n !== 'number') return '—';
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + ' ' + u[i];
  }
  const newestFirst = (list) =>
    [...list].sort((a, b) => (Date.parse(b.created_at) || 0) - (Date.parse(a.created_at) || 0));
  const badge = (status) => h('span', { class: `badge badge-${status}`, 'data-status': status }, status || '?');
  const jobLink = (j) => h('a', { href: `#/transfers/${j.id}` }, j.name || j.id);

  // The summary's robust accuracies as [{name, robust_accuracy}], whichever shape it has.
  function summaryAttacks(sum) {
    if (!sum) return [];
    if (Array.isArray(sum.attacks)) return sum.attacks;
    if (sum.robust_accuracy && typeof sum.robust_accuracy === 'object')
      return Object.entries(sum.robust_accuracy).map(([name, v]) => ({ name, robust_accuracy: v }));
    return [];
  }

  // ---- the API -----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message, field) {
      super(message);
      this.status = status;
      this.code = code;
      this.field = field || null;
    }
  }

  // fetch with the bearer key; JSON by default, the Response itself with {raw: true}. Errors
  // become ApiError with the API's code, message and field; a 401 also asks for a new key.
  async function api(path, opts = {}) {
    const { raw, json, ...init } = opts;
    init.headers = Object.assign({ Authorization: 'Bearer ' + key }, init.headers || {});
    if (json !== undefined) {
      init.method = init.method || 'POST';
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(json);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, 'network', `cannot reach the rtaas server (${e.message})`);
    }
    if (!res.ok) {
      let err = { code: `http_${res.status}`, message: res.statusText || `HTTP ${res.status}` };
      try {
        const j = await res.json();
        if (j && j.error) err = j.error;
      } catch (_) { /* not JSON */ }
      const e = new ApiError(res.status, err.code, err.message, err.field);
      if (res.status === 401) unauthorized(e);
      throw e;
    }
    if (raw) return res;
    return res.status === 204 ? null : res.json();
  }

  // Downloads a resource of the API (which needs the key, so no plain link can do it).
  async function download(path, fallbackName, button) {
    if (button) button.disabled = true;
    try {
      const res = await api(path, { raw: true });
      const blob = await res.blob();
      const cd = res.headers.get('Content-Disposition') || '';
      const m = /filename="?([^";]+)"?/.exec(cd);
      const name = fallbackName || (m ? m[1] : 'download');
      const url = URL.createObjectURL(blob);
      const a = h('a', { href: url, download: name, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      banner('');
    } catch (e) {
      if (e.status !== 401) banner(`Download failed: ${e.message}`);
    } finally {
      if (button) button.disabled = false;
    }
  }

  // ---- the key -----------------------------------------------------------------------------

  function showKeyPrompt(message) {
    stopView();
    main().replaceChildren();
    $('#nav').hidden = true;
    $('#signout').hidden = true;
    $('#who').textContent = '';
    banner('');
    $('#key-view').hidden = false;
    const err = $('#key-error');
    err.textContent = message || '';
    err.hidden = !message;
    $('#key-input').focus();
  }

  function unauthorized(e) {
    key = '';
    sessionStorage.removeItem(KEY_STORE);
    showKeyPrompt(`The server refused this API key (401 ${e.code}: ${e.message}). ` +
      'Check the key, or make a new one with `rtaas apikey create --tenant NAME`.');
  }

  async function onKeySubmit(ev) {
    ev.preventDefault();
    const input = $('#key-input');
    const candidate = input.value.trim();
    const err = $('#key-error');
    if (!candidate) return;
    key = candidate;
    err.hidden = true;
    try {
      await api('/v1/datasets');
    } catch (e) {
      if (e.status !== 401) {
        key = '';
        err.textContent = `Could not check the key: ${e.message}`;
        err.hidden = false;
      }
      return; // a 401 already showed its message
    }
    sessionStorage.setItem(KEY_STORE, key);
    input.value = '';
    $('#key-view').hidden = true;
    route();
  }

  // ---- routing -----------------------------------------------------------------------------

  function stopView() {
    view.token++;
    clearTimeout(view.timer);
    view.timer = null;
    for (const u of view.urls) URL.revokeObjectURL(u);
    view.urls = [];
  }

  // Runs fn now and then every ms() milliseconds while the view lasts; fn returns false to stop.
  function poll(fn, ms) {
    const token = view.token;
    const tick = async () => {
      if (token !== view.token) return;
      let again = true;
      try {
        again = (await fn(token)) !== false;
        if (token === view.token) banner('');
      } catch (e) {
        if (e.status === 401) return;
        if (token === view.token) banner(`${e.message} — retrying`);
      }
      if (again && token === view.token) view.timer = setTimeout(tick, ms());
    };
    tick();
  }

  function route() {
    stopView();
    if (!key) {
      showKeyPrompt('');
      return;
    }
    $('#key-view').hidden = true;
    $('#nav').hidden = false;
    $('#signout').hidden = false;
    $('#who').textContent = `key ${key.slice(0, 10)}…`;
    const hash = location.hash.replace(/^#/, '') || '/';
    const parts = hash.split('/').filter(Boolean);
    let name = 'home';
    if (parts[0] === 'new') name = 'new';
    else if (parts[0] === 'transfers' && parts[1]) name = 'transfer';
    else if (parts[0] === 'compare') name = 'compare';
    for (const a of document.querySelectorAll('#nav a'))
      a.classList.toggle('active', a.dataset.nav === name);
    main().replaceChildren();
    if (name === 'new') viewNew();
    else if (name === 'transfer') viewTransfer(decodeURIComponent(parts[1]));
    else if (name === 'compare') viewCompare((parts[1] || '').split(',').filter(Boolean).map(decodeURIComponent));
    else viewHome();
  }

  // ---- progress ----------------------------------------------------------------------------

  // A bar for a job: the phase, done/total, percent and the ETA when the worker gives one.
  function progressBar(job) {
    const p = job.progress || {};
    const total = Number(p.total) || 0;
    const done = Number(p.done) || 0;
    let value = total > 0 ? Math.min(100, Math.max(0, (100 * done) / total)) : 0;
    let label;
    if (job.status === 'queued') {
      label = 'queued';
      value = 0;
    } else if (job.status === 'succeeded') {
      label = 'done';
      value = 100;
    } else {
      label = `${p.phase || 'starting'}${total ? ` ${done}/${total}` : ''} · ${value.toFixed(0)} %`;
      const step = PHASES.indexOf(p.phase);
      if (step >= 0) label += ` (phase ${step + 1} of ${PHASES.length})`;
      if (typeof p.eta_seconds === 'number') label += ` · ETA ${duration(p.eta_seconds)}`;
    }
    const fill = h('div', { class: 'progress-fill' });
    fill.style.width = value.toFixed(1) + '%';
    return h('div', {
      class: 'progress', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100,
      'aria-valuenow': value.toFixed(1), 'aria-valuetext': label, 'data-phase': p.phase || '',
      'data-done': done, 'data-total': total, title: label,
    }, fill, h('span', { class: 'progress-label' }, label));
  }
  const active = (j) => j && !FINAL.has(j.status);

  // ---- overview ----------------------------------------------------------------------------

  function viewHome() {
    const root = main();
    const ds = h('section', { class: 'card', id: 'datasets-card' }, h('h2', {}, 'Datasets'), h('p', { class: 'muted' }, 'Loading…'));
    const bb = h('section', { class: 'card', id: 'backbones-card' }, h('h2', {}, 'Backbones'));
    const tr = h('section', { class: 'card', id: 'transfers-card' }, h('h2', {}, 'Transfers'));
    root.append(tr, bb, ds);
    let busy = false;
    poll(async (token) => {
      const [d, b, t] = await Promise.all([
        api('/v1/datasets'), api('/v1/backbones'), api('/v1/transfers?kind=all'),
      ]);
      if (token !== view.token) return false;
      const jobs = t.transfers || [];
      const byId = new Map(jobs.map((j) => [j.id, j]));
      renderTransfers(tr, newestFirst(jobs.filter((j) => j.kind !== 'backbone')));
      renderBackbones(bb, newestFirst(b.backbones || []), byId);
      renderDatasets(ds, newestFirst(d.datasets || []));
      busy = jobs.some(active) || (b.backbones || []).some((x) => x.status === 'training');
      return true;
    }, () => (busy ? POLL_ACTIVE_MS : POLL_IDLE_MS));
  }

  function table(id, head, rows, emptyText) {
    if (!rows.length) return h('p', { class: 'empty', id: id + '-empty' }, emptyText);
    return h('div', { class: 'table-wrap' }, h('table', { id },
      h('thead', {}, h('tr', {}, head.map((c) => h('th', { class: c.num ? 'num' : null }, c.label || c)))),
      h('tbody', {}, rows)));
  }

  function renderTransfers(card, jobs) {
    const n = () => [...picked].length;
    const compareBtn = h('button', {
      type: 'button', id: 'compare-picked', class: 'secondary', disabled: n() === 0,
      onclick: () => { location.hash = '#/compare/' + [...picked].join(','); },
    }, `Compare selected (${n()})`);
    const rows = jobs.map((j) => {
      const sum = j.summary || {};
      const box = h('input', {
        type: 'checkbox', 'aria-label': `compare ${j.name || j.id}`, 'data-pick': j.id,
        checked: picked.has(j.id), disabled: j.status !== 'succeeded',
        onchange: (e) => {
          if (e.target.checked) picked.add(j.id); else picked.delete(j.id);
          compareBtn.textContent = `Compare selected (${n()})`;
          compareBtn.disabled = n() === 0;
        },
      });
      return h('tr', { 'data-id': j.id, 'data-status': j.status },
        h('td', {}, box),
        h('td', {}, jobLink(j), h('div', { class: 'muted mono' }, j.id)),
        h('td', {}, j.method || '—'),
        h('td', { class: 'mono' }, j.backbone || '—'),
        h('td', {}, badge(j.status)),
        h('td', {}, active(j) ? progressBar(j) : (j.status === 'failed' ? h('span', { class: 'error' }, j.error || 'failed') : '')),
        h('td', { class: 'num' }, pct(sum.clean_accuracy)),
        h('td', { class: 'num' }, pct(sum.worst_case_accuracy)),
        h('td', {}, when(j.created_at)));
    });
    put(card,
      h('div', { class: 'row' }, h('h2', {}, 'Transfers'), h('span', { class: 'spacer' }),
        compareBtn, h('a', { class: 'button', href: '#/new' }, 'New transfer')),
      table('transfers', ['', 'name', 'method', 'backbone', 'status', 'progress',
        { label: 'clean', num: true }, { label: 'worst case', num: true }, 'created'], rows,
      'No transfers yet: start one with “New transfer”.'));
  }

  function renderBackbones(card, list, jobs) {
    const rows = list.map((b) => {
      const job = b.job ? jobs.get(b.job) : null;
      return h('tr', { 'data-id': b.id, 'data-status': b.status },
        h('td', {}, b.name || b.id, h('div', { class: 'muted mono' }, b.id)),
        h('td', {}, b.arch || '—'),
        h('td', {}, badge(b.status)),
        h('td', {}, b.status === 'training' && job ? progressBar(job)
          : (b.status === 'failed' ? h('span', { class: 'error' }, b.error || (job && job.error) || 'failed') : '')),
        h('td', {}, b.method || b.trained_by || 'uploaded'),
        h('td', { class: 'num' }, b.input_size ?? '—'),
        h('td', { class: 'num' }, b.classes ?? '—'),
        h('td', { class: 'num' }, b.eps ?? '—'),
        h('td', {}, b.job ? h('a', { href: `#/transfers/${b.job}` }, 'training job') : ''),
        h('td', {}, when(b.created_at)));
    });
    put(card, h('h2', {}, 'Backbones'),
      table('backbones', ['name', 'arch', 'status', 'progress', 'trained by', { label: 'input', num: true },
        { label: 'classes', num: true }, { label: 'eps', num: true }, '', 'created'], rows,
      'No backbones yet: upload weights or train one (POST /v1/backbones).'));
  }

  function renderDatasets(card, list) {
    const rows = list.map((d) => h('tr', { 'data-id': d.id },
      h('td', {}, d.name || d.id, h('div', { class: 'muted mono' }, d.id)),
      h('td', {}, d.format || '—'),
      h('td', { class: 'num' }, d.n ?? '—'),
      h('td', { class: 'num' }, d.classes ?? '—'),
      h('td', {}, Array.isArray(d.shape) ? d.shape.join('×') : '—'),
      h('td', { class: 'num' }, bytes(d.size)),
      h('td', {}, when(d.created_at))));
    put(card, h('h2', {}, 'Datasets'),
      table('datasets', ['name', 'format', { label: 'images', num: true }, { label: 'classes', num: true },
        'shape', { label: 'size', num: true }, 'created'], rows,
      'No datasets yet: upload one (POST /v1/datasets).'));
  }

  // ---- new transfer ------------------------------------------------------------------------

  // A labelled control; `field` names the request fields whose errors show under it.
  function field(label, control, fieldPath, hint) {
    const id = 'f-' + fieldPath.split(' ')[0].replace(/[^a-z0-9]+/gi, '-');
    control.id = control.id || id;
    return h('div', { class: 'field', 'data-field': fieldPath },
      h('label', { for: control.id }, label), control, hint ? h('div', { class: 'hint' }, hint) : null);
  }
  const input = (name, value, extra = {}) =>
    h('input', Object.assign({ name, type: 'text', value: value ?? '', autocomplete: 'off' }, extra));
  function select(name, options, value) {
    return h('select', { name }, options.map(([v, label]) =>
      h('option', { value: v, selected: v === value }, label)));
  }

  const METHOD_PARAMS = {
    linear: [],
    mlp: ['hidden', 'dropout'],
    lwf: ['lambda_d', 'distance', 'warm_start'],
    retrain_blocks: ['blocks'],
    adv_finetune: ['p_eps', 'p_attack_steps'],
  };

  async function viewNew() {
    const token = view.token;
    const root = main();
    root.append(h('section', { class: 'card' }, h('h2', {}, 'New transfer'), h('p', { class: 'muted' }, 'Loading…')));
    const [d, b] = await Promise.all([api('/v1/datasets'), api('/v1/backbones')]).catch((e) => {
      if (e.status !== 401) banner(e.message);
      return [null, null];
    });
    if (!d || token !== view.token) return;
    const datasets = newestFirst(d.datasets || []);
    const backbones = newestFirst(b.backbones || []).filter((x) => x.status === 'ready');
    const dsOpts = datasets.map((x) => [x.id, `${x.name || x.id} (${x.n} images, ${x.classes} classes)`]);
    const bbOpts = backbones.map((x) => [x.id, `${x.name || x.id} (${x.arch}${x.eps != null ? `, eps ${x.eps}` : ''})`]);

    const method = select('method', [['linear', 'linear probe'], ['mlp', 'MLP head'], ['lwf', 'LwF fine-tune'],
      ['retrain_blocks', 'retrain last blocks'], ['adv_finetune', 'adversarial fine-tune']], 'linear');
    const paramFields = {
      hidden: field('hidden sizes', input('hidden', '2048'), 'params.hidden', 'comma-separated'),
      dropout: field('dropout', input('dropout', ''), 'params.dropout'),
      lambda_d: field('lambda_d (feature distance weight)', input('lambda_d', '0.01'), 'params.lambda_d'),
      distance: field('distance', select('distance', [['l2', 'l2'], ['l1', 'l1']], 'l2'), 'params.distance'),
      warm_start: field('warm start (fraction of epochs)', input('warm_start', ''), 'params.warm_start'),
      blocks: field('blocks to retrain', input('blocks', '1'), 'params.blocks'),
      p_eps: field('training eps', input('p_eps', ''), 'params.eps', 'a number or a fraction like 8/255'),
      p_attack_steps: field('training PGD steps', input('p_attack_steps', '7'), 'params.attack params.attack.steps'),
    };
    const showParams = () => {
      const on = new Set(METHOD_PARAMS[method.value] || []);
      for (const [k, el] of Object.entries(paramFields)) el.hidden = !on.has(k);
    };
    method.addEventListener('change', showParams);

    const attackRows = ATTACKS.map((a) => {
      const box = h('input', { type: 'checkbox', name: 'attack', value: a.kind, id: `atk-${a.kind}`, checked: a.on });
      const steps = a.steps === null ? h('span', { class: 'muted' }, 'one step')
        : h('input', { type: 'text', name: `steps-${a.kind}`, value: a.steps, 'aria-label': `${a.kind} steps`, 'data-steps': a.kind });
      return h('div', { class: 'attack field', 'data-attack': a.kind },
        h('label', { for: `atk-${a.kind}` }, box, ' ', a.label), steps, h('span', { class: 'hint' }, a.steps === null ? '' : 'steps'));
    });

    const formError = h('p', { class: 'error form-error', id: 'form-error', role: 'alert', hidden: true });
    const submit = h('button', { type: 'submit', id: 'submit-transfer' }, 'Start the transfer');
    const form = h('form', { class: 'spec', id: 'transfer-form', novalidate: true },
      h('fieldset', {}, h('legend', {}, 'Model'), h('div', { class: 'fields' },
        field('name', input('name', ''), 'name', 'a label for people (optional)'),
        field('backbone', bbOpts.length ? select('backbone', bbOpts, bbOpts[0][0]) : input('backbone', '', { placeholder: 'bb_…' }),
          'backbone', bbOpts.length ? null : 'no ready backbone yet'),
        field('method', method, 'method'),
        field('seed', input('seed', '0'), 'seed'))),
      h('fieldset', {}, h('legend', {}, 'Data'), h('div', { class: 'fields' },
        field('training dataset', dsOpts.length ? select('dataset', dsOpts, dsOpts[0][0]) : input('dataset', '', { placeholder: 'ds_…' }),
          'dataset dataset.id'),
        field('classes', input('classes', '', { placeholder: 'all; or 5,6,7 or 5-9' }), 'dataset.classes', 'kept and relabelled 0..k-1'),
        field('images per class', input('per_class', '', { placeholder: 'all' }), 'dataset.per_class'),
        field('test dataset', dsOpts.length ? select('test', dsOpts, dsOpts[0][0]) : input('test', '', { placeholder: 'ds_…' }),
          'test test.id'),
        field('test classes', input('test_classes', '', { placeholder: 'as training' }), 'test.classes'),
        field('test images (limit)', input('test_limit', '', { placeholder: 'all' }), 'test.limit'))),
      h('fieldset', { 'data-field': 'params' }, h('legend', {}, 'Training'), h('div', { class: 'fields' },
        field('epochs', input('epochs', '4'), 'params.epochs'),
        field('batch size', input('batch_size', '128'), 'params.batch_size'),
        field('learning rate', input('lr', '0.01'), 'params.lr'),
        Object.values(paramFields))),
      h('fieldset', { 'data-field': 'eval' }, h('legend', {}, 'Evaluation'), h('div', { class: 'fields' },
        field('eps (pixel units, [0,1])', input('eps', '0.1'), 'eval.eps', 'a number or a fraction like 8/255'),
        field('examples attacked', input('examples', '500'), 'eval.examples'),
        field('gradient maps', input('gradient_maps', '16'), 'eval.gradient_maps')),
      h('h3', {}, 'Attacks'),
      h('div', { class: 'attacks', 'data-field': 'eval.attacks' }, attackRows)),
      h('div', { class: 'row' }, submit, formError));
    showParams();
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      submitTransfer(form, submit, formError, attackRows);
    });
    put(root, h('section', { class: 'card' }, h('h2', {}, 'New transfer'),
      h('p', { class: 'muted' }, 'The API checks every field; its errors show next to the field they concern.'), form));
  }

  // A form text as JSON: "" → undefined, a number → number, anything else as typed (the API
  // answers for it).
  function jsonValue(text) {
    const t = String(text ?? '').trim();
    if (t === '') return undefined;
    const n = Number(t);
    return Number.isFinite(n) ? n : t;
  }
  function classList(text) {
    const t = String(text ?? '').trim();
    if (!t) return undefined;
    const out = [];
    for (const part of t.split(/[\s,]+/).filter(Boolean)) {
      const r = /^(\d+)-(\d+)$/.exec(part);
      if (r && +r[2] >= +r[1] && +r[2] - +r[1] < 10000) for (let c = +r[1]; c <= +r[2]; c++) out.push(c);
      else out.push(jsonValue(part));
    }
    return out;
  }
  function prune(o) {
    for (const k of Object.keys(o)) if (o[k] === undefined) delete o[k];
    return o;
  }

  function transferRequest(form, attackRows) {
    const v = (name) => (form.elements[name] ? form.elements[name].value : '');
    const m = v('method');
    const on = new Set(METHOD_PARAMS[m] || []);
    const params = prune({
      epochs: jsonValue(v('epochs')), batch_size: jsonValue(v('batch_size')), lr: jsonValue(v('lr')),
    });
    if (on.has('hidden')) params.hidden = classList(v('hidden'));
    if (on.has('dropout')) params.dropout = jsonValue(v('dropout'));
    if (on.has('lambda_d')) params.lambda_d = jsonValue(v('lambda_d'));
    if (on.has('distance')) params.distance = v('distance') || undefined;
    if (on.has('warm_start')) params.warm_start = jsonValue(v('warm_start'));
    if (on.has('blocks')) params.blocks = jsonValue(v('blocks'));
    if (on.has('p_eps')) params.eps = jsonValue(v('p_eps'));
    if (on.has('p_attack_steps') && jsonValue(v('p_attack_steps')) !== undefined)
      params.attack = { kind: 'pgd', steps: jsonValue(v('p_attack_steps')) };
    prune(params);

    // attacks in the order of the rows; each row learns its index for the errors
    const attacks = [];
    for (const row of attackRows) {
      const kind = row.dataset.attack;
      const box = row.querySelector('input[type=checkbox]');
      row.dataset.field = '';
      if (!box.checked) continue;
      const a = { kind };
      const steps = row.querySelector('[data-steps]');
      if (steps && jsonValue(steps.value) !== undefined) a.steps = jsonValue(steps.value);
      row.dataset.field = `eval.attacks[${attacks.length}]`;
      attacks.push(a);
    }
    const classes = classList(v('classes'));
    const body = prune({
      name: v('name').trim() || undefined,
      backbone: v('backbone').trim(),
      method: m,
      seed: jsonValue(v('seed')),
      dataset: prune({ id: v('dataset').trim(), classes, per_class: jsonValue(v('per_class')) }),
      test: prune({ id: v('test').trim(), classes: classList(v('test_classes')) || classes, limit: jsonValue(v('test_limit')) }),
      params: Object.keys(params).length ? params : undefined,
      eval: prune({
        eps: jsonValue(v('eps')), examples: jsonValue(v('examples')), gradient_maps: jsonValue(v('gradient_maps')), attacks,
      }),
    });
    return body;
  }

  // The form element that shows errors of an API field path: the path itself, then without its
  // last index, then its parents ("eval.attacks[1].steps" → "eval.attacks[1]" → "eval.attacks"
  // → "eval").
  function fieldElement(form, path) {
    const all = [...form.querySelectorAll('[data-field]')].filter((el) => !el.hidden);
    const has = (el, p) => el.dataset.field.split(' ').includes(p);
    let p = path;
    while (p) {
      const el = all.find((x) => has(x, p) && x.classList.contains('field')) || all.find((x) => has(x, p));
      if (el) return el;
      if (/\[\d+\]$/.test(p)) p = p.replace(/\[\d+\]$/, '');
      else if (p.includes('.')) p = p.slice(0, p.lastIndexOf('.'));
      else break;
    }
    return null;
  }

  function clearErrors(form) {
    for (const el of form.querySelectorAll('.field-error')) el.remove();
    for (const el of form.querySelectorAll('.invalid')) el.classList.remove('invalid');
    for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
  }

  async function submitTransfer(form, submit, formError, attackRows) {
    clearErrors(form);
    formError.hidden = true;
    const body = transferRequest(form, attackRows);
    submit.disabled = true;
    try {
      const r = await api('/v1/transfers', { json: body });
      location.hash = `#/transfers/${r.id}`;
    } catch (e) {
      if (e.status === 401) return;
      const msg = e.message || 'the request failed';
      const el = e.field ? fieldElement(form, e.field) : null;
      if (el) {
        el.classList.add('invalid');
        const control = el.querySelector('input:not([type=checkbox]), select');
        if (control) control.setAttribute('aria-invalid', 'true');
        const p = h('p', { class: 'field-error', 'data-error-for': e.field, role: 'alert' }, msg);
        el.append(p);
        if (control) control.focus();
      }
      formError.textContent = `${e.status ? e.status + ' ' : ''}${e.code}${e.field ? ` (${e.field})` : ''}: ${msg}`;
      formError.hidden = false;
    } finally {
      submit.disabled = false;
    }
  }

  // ---- one transfer ------------------------------------------------------------------------

  function viewTransfer(id) {
    const root = main();
    const head = h('section', { class: 'card', id: 'job-card' }, h('p', { class: 'muted' }, 'Loading…'));
    const body = h('div', { id: 'report' });
    root.append(head, body);
    let job = null;
    let reportShown = false;
    poll(async (token) => {
      job = await api(`/v1/transfers/${encodeURIComponent(id)}`);
      if (token !== view.token) return false;
      renderJob(head, job);
      if (job.status === 'succeeded' && !reportShown) {
        reportShown = true;
        const report = await api(`/v1/transfers/${encodeURIComponent(id)}/report`);
        if (token !== view.token) return false;
        renderReport(body, job, report);
      }
      return !FINAL.has(job.status);
    }, () => POLL_ACTIVE_MS);
  }

  function renderJob(card, j) {
    const cancel = active(j) ? h('button', {
      type: 'button', class: 'secondary', id: 'cancel-job',
      onclick: async (e) => {
        e.target.disabled = true;
        try { await api(`/v1/transfers/${j.id}/cancel`, { method: 'POST' }); } catch (err) { banner(err.message); }
      },
    }, j.cancel_requested ? 'Cancelling…' : 'Cancel') : null;
    const downloads = j.status === 'succeeded' ? [
      h('button', { type: 'button', id: 'download-head', onclick: (e) => download(`/v1/transfers/${j.id}/head`, null, e.target) },
        j.kind === 'backbone' ? 'Download the model' : 'Download the head'),
      h('button', { type: 'button', id: 'download-report', class: 'secondary',
        onclick: (e) => download(`/v1/transfers/${j.id}/report`, `${j.id}-report.json`, e.target) }, 'Download the report (JSON)'),
    ] : [];
    put(card,
      h('div', { class: 'row' },
        h('h2', {}, j.name || j.id), h('span', { id: 'job-status' }, badge(j.status)),
        h('span', { class: 'spacer' }), downloads, cancel),
      active(j) ? h('div', { id: 'job-progress' }, progressBar(j)) : null,
      j.error ? h('p', { class: 'error', id: 'job-error' }, j.error) : null,
      h('dl', { class: 'facts' },
        h('dt', {}, 'id'), h('dd', { class: 'mono' }, j.id),
        h('dt', {}, 'kind'), h('dd', {}, j.kind || '—'),
        h('dt', {}, 'method'), h('dd', {}, j.method || '—'),
        h('dt', {}, 'backbone'), h('dd', { class: 'mono' }, j.backbone || '—'),
        j.dataset ? [h('dt', {}, 'dataset'), h('dd', { class: 'mono' }, j.dataset)] : null,
        h('dt', {}, 'attempts'), h('dd', {}, j.attempts ?? '—'),
        h('dt', {}, 'created'), h('dd', {}, when(j.created_at)),
        h('dt', {}, 'started'), h('dd', {}, when(j.started_at)),
        h('dt', {}, 'finished'), h('dd', {}, when(j.finished_at))));
  }

  function renderReport(root, job, rep) {
    const ev = rep.evaluation || {};
    const attacks = ev.attacks || [];
    const examples = ev.examples;
    const classes = (rep.spec && rep.spec.test && rep.spec.test.classes) ||
      (rep.spec && rep.spec.dataset && rep.spec.dataset.classes) || null;

    // the headline table: clean, each attack, worst case
    const acc = (rowKey, label, r, extra) => h('tr', { 'data-row': rowKey, class: rowKey === 'worst' ? 'worst' : null },
      h('th', { scope: 'row' }, label),
      h('td', { class: 'num', 'data-col': 'accuracy', 'data-value': r.accuracy ?? r.robust_accuracy },
        pct(r.accuracy ?? r.robust_accuracy)),
      h('td', { class: 'num', 'data-col': 'correct' }, r.correct != null ? `${r.correct} / ${examples ?? '?'}` : '—'),
      h('td', { class: 'num', 'data-col': 'eps' }, extra.eps != null ? num(extra.eps, 4) : '—'),
      h('td', { class: 'num', 'data-col': 'steps' }, extra.steps ?? '—'),
      h('td', { class: 'num', 'data-col': 'seconds' }, rowKey === 'worst' ? '—' : duration(r.seconds)));
    const rows = [acc('clean', 'clean', ev.clean || {}, {})];
    for (const a of attacks) rows.push(acc(`attack:${a.name}`, a.name || a.kind, a, a));
    if (ev.worst_case) rows.push(acc('worst', 'worst case', ev.worst_case, {}));
    const reportTable = h('table', { id: 'report-table' },
      h('thead', {}, h('tr', {}, ['', 'accuracy', 'correct', 'eps', 'steps', 'time'].map((c, i) => h('th', { class: i ? 'num' : null }, c)))),
      h('tbody', {}, rows));

    // per class
    const cols = [['clean', ev.clean]].concat(attacks.map((a) => [a.name, a]));
    if (ev.worst_case) cols.push(['worst case', ev.worst_case]);
    const nclass = Math.max(0, ...cols.map(([, r]) => (r && Array.isArray(r.per_class) ? r.per_class.length : 0)));
    const pcRows = [];
    for (let c = 0; c < nclass; c++) {
      pcRows.push(h('tr', { 'data-class': c },
        h('th', { scope: 'row' }, classes && classes[c] !== undefined ? `${c} (label ${classes[c]})` : String(c)),
        cols.map(([name, r]) => h('td', { class: 'num', 'data-col': name, 'data-value': r && r.per_class ? r.per_class[c] : null },
          pct(r && r.per_class ? r.per_class[c] : null)))));
    }
    const perClass = nclass ? h('table', { id: 'perclass-table' },
      h('thead', {}, h('tr', {}, h('th', {}, 'class'), cols.map(([name]) => h('th', { class: 'num' }, name)))),
      h('tbody', {}, pcRows)) : h('p', { class: 'empty' }, 'No per-class numbers in this report.');

    const model = rep.model || {};
    const facts = h('dl', { class: 'facts' },
      h('dt', {}, 'evaluated on'), h('dd', {}, `${examples ?? '?'} examples of the ${ev.on || 'test'} set`),
      h('dt', {}, 'model'), h('dd', {}, `${model.arch || '?'}, ${model.num_classes ?? '?'} classes, input ${model.in_channels ?? '?'}×${model.input_size ?? '?'}²`),
      h('dt', {}, 'backend'), h('dd', {}, rep.backend ? `${rep.backend.name} (${rep.backend.threads} threads)` : '—'),
      h('dt', {}, 'seed'), h('dd', {}, rep.seed ?? '—'),
      h('dt', {}, 'rtaas'), h('dd', {}, rep.rtaas_version || '—'));

    put(root,
      h('div', { class: 'grid2' },
        h('section', { class: 'card', id: 'report-card' }, h('h2', {}, 'Robustness'), h('div', { class: 'table-wrap' }, reportTable), h('h3', {}, 'This run'), facts),
        h('section', { class: 'card', id: 'perclass-card' }, h('h2', {}, 'Per class'), h('div', { class: 'table-wrap' }, perClass))),
      h('div', { class: 'grid2' },
        h('section', { class: 'card', id: 'curves-card' }, h('h2', {}, 'Training'), curves(rep.training || {})),
        h('section', { class: 'card', id: 'timings-card' }, h('h2', {}, 'Timings'), timings(rep))),
      gallery(job, rep),
      h('section', { class: 'card', id: 'spec-card' }, h('h2', {}, 'Request'), h('pre', { class: 'mono' }, JSON.stringify(rep.spec || {}, null, 2))));
  }

  // ---- plots (inline SVG) ------------------------------------------------------------------

  function niceTicks(lo, hi, n) {
    const span = hi - lo || 1;
    const step0 = span / n;
    const mag = Math.pow(10, Math.floor(Math.log10(step0)));
    const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((s2) => s2 >= step0) || step0;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(+v.toFixed(10));
    return out;
  }

  // Training curves: loss on the left axis, accuracies (0..1) on the right, per epoch.
  function curves(training) {
    const eps = Array.isArray(training.epochs) ? training.epochs : [];
    const meta = h('p', { class: 'muted' },
      `${eps.length} epochs, ${training.steps ?? '?'} steps, ${duration(training.seconds)}${training.resumed ? ' (resumed from a checkpoint)' : ''}`);
    if (!eps.length) return h('div', {}, meta, h('p', { class: 'empty' }, 'No epochs recorded.'));
    const W = 640, H = 260, L = 52, R = 52, T = 14, B = 36;
    const xs = eps.map((e, i) => (typeof e.epoch === 'number' ? e.epoch + 1 : i + 1));
    let x0 = Math.min(...xs), x1 = Math.max(...xs);
    if (x0 === x1) { x0 -= 0.5; x1 += 0.5; }
    const losses = eps.map((e) => e.loss).filter(Number.isFinite);
    const lmax = (losses.length ? Math.max(...losses) : 1) * 1.1 || 1;
    const X = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
    const YL = (v) => T + (1 - v / lmax) * (H - T - B);
    const YA = (v) => T + (1 - v) * (H - T - B);
    const series = [
      { key: 'loss', color: '#c0392b', y: YL, label: 'training loss', cls: 'loss' },
      { key: 'accuracy', color: '#1f8a4c', y: YA, label: 'training accuracy', cls: 'acc' },
      { key: 'val_accuracy', color: '#7c4dbd', y: YA, label: 'validation accuracy', cls: 'val' },
    ].filter((sr) => eps.some((e) => Number.isFinite(e[sr.key])));
    const svg = s('svg', { class: 'plot', id: 'curves', viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img',
      'aria-label': 'training loss and accuracy per epoch' });
    // axes and grid
    for (const t of niceTicks(0, 1, 5)) {
      svg.append(s('line', { x1: L, x2: W - R, y1: YA(t), y2: YA(t), stroke: '#eef1f6' }),
        s('text', { x: W - R + 6, y: YA(t) + 4 }, `${Math.round(t * 100)}%`));
    }
    for (const t of niceTicks(0, lmax, 5)) svg.append(s('text', { x: L - 6, y: YL(t) + 4, 'text-anchor': 'end' }, num(t, 3)));
    const xt = xs.length <= 12 ? xs : niceTicks(x0, x1, 8);
    for (const t of xt) svg.append(s('text', { x: X(t), y: H - B + 16, 'text-anchor': 'middle' }, String(t)));
    svg.append(
      s('line', { x1: L, x2: L, y1: T, y2: H - B, stroke: '#9aa3b5' }),
      s('line', { x1: W - R, x2: W - R, y1: T, y2: H - B, stroke: '#9aa3b5' }),
      s('line', { x1: L, x2: W - R, y1: H - B, y2: H - B, stroke: '#9aa3b5' }),
      s('text', { x: (L + W - R) / 2, y: H - 4, 'text-anchor': 'middle' }, 'epoch'),
      s('text', { x: 12, y: T + (H - T - B) / 2, transform: `rotate(-90 12 ${T + (H - T - B) / 2})`, 'text-anchor': 'middle' }, 'loss'),
      s('text', { x: W - 10, y: T + (H - T - B) / 2, transform: `rotate(90 ${W - 10} ${T + (H - T - B) / 2})`, 'text-anchor': 'middle' }, 'accuracy'));
    for (const sr of series) {
      const pts = eps.map((e, i) => [xs[i], e[sr.key]]).filter(([, v]) => Number.isFinite(v));
      svg.append(s('polyline', { points: pts.map(([x, v]) => `${X(x).toFixed(1)},${sr.y(v).toFixed(1)}`).join(' '),
        fill: 'none', stroke: sr.color, 'stroke-width': 2, 'data-series': sr.key }));
      for (const [x, v] of pts) {
        svg.append(s('circle', { cx: X(x).toFixed(1), cy: sr.y(v).toFixed(1), r: 3, fill: sr.color, 'data-series': sr.key, 'data-value': v },
          s('title', {}, `epoch ${x}: ${sr.label} ${num(v, 4)}`)));
      }
    }
    const legend = h('div', { class: 'legend' }, series.map((sr) =>
      h('span', {}, h('span', { class: `swatch swatch-${sr.cls}` }), sr.label)));
    const table2 = h('details', {}, h('summary', {}, 'Numbers'), h('table', { id: 'epochs-table' },
      h('thead', {}, h('tr', {}, ['epoch', 'loss', 'accuracy', 'lr', 'time'].map((c) => h('th', { class: 'num' }, c)))),
      h('tbody', {}, eps.map((e, i) => h('tr', {},
        h('td', { class: 'num' }, xs[i]), h('td', { class: 'num' }, num(e.loss, 4)), h('td', { class: 'num' }, pct(e.accuracy)),
        h('td', { class: 'num' }, num(e.lr, 5)), h('td', { class: 'num' }, duration(e.seconds)))))));
    return h('div', {}, meta, svg, legend, table2);
  }

  function timings(rep) {
    const t = rep.timings || {};
    const keys = Object.keys(t).filter((k) => typeof t[k] === 'number')
      .sort((a, b) => ((PHASES.indexOf(a) + 1) || 99) - ((PHASES.indexOf(b) + 1) || 99));
    const total = keys.reduce((acc, k) => acc + t[k], 0);
    const rows = keys.map((k) => h('tr', { 'data-phase': k }, h('th', { scope: 'row' }, k),
      h('td', { class: 'num' }, duration(t[k])), h('td', { class: 'num' }, total ? `${((100 * t[k]) / total).toFixed(0)} %` : '—')));
    rows.push(h('tr', { class: 'worst' }, h('th', { scope: 'row' }, 'sum of phases'), h('td', { class: 'num' }, duration(total)), h('td', {})));
    if (rep.job && typeof rep.job.seconds === 'number')
      rows.push(h('tr', {}, h('th', { scope: 'row' }, 'job, wall clock'), h('td', { class: 'num' }, duration(rep.job.seconds)), h('td', {})));
    return h('table', { id: 'timings-table' },
      h('thead', {}, h('tr', {}, h('th', {}, 'phase'), h('th', { class: 'num' }, 'time'), h('th', { class: 'num' }, 'share'))),
      h('tbody', {}, rows));
  }

  // ---- gradient maps -----------------------------------------------------------------------

  function gallery(job, rep) {
    const arts = Array.isArray(rep.artifacts) ? rep.artifacts : [];
    let count = arts.filter((a) => /^gradients\/\d+\.png$/.test(a.name || '')).length;
    if (!count && rep.spec && rep.spec.eval && Number.isInteger(rep.spec.eval.gradient_maps)) count = rep.spec.eval.gradient_maps;
    const card = h('section', { class: 'card', id: 'gallery-card' }, h('h2', {}, 'Gradient maps'),
      h('p', { class: 'muted' }, 'Each example: the input, the gradient of the loss with respect to the input, and the adversarial example.'));
    if (!count) {
      card.append(h('p', { class: 'empty' }, 'This job drew no gradient maps (eval.gradient_maps was 0).'));
      return card;
    }
    const pages = Math.ceil(count / GALLERY_PAGE);
    const grid = h('div', { class: 'gallery', id: 'gallery' });
    const label = h('span', { id: 'gallery-page' });
    const prev = h('button', { type: 'button', class: 'secondary', id: 'gallery-prev' }, '◀ Previous');
    const next = h('button', { type: 'button', class: 'secondary', id: 'gallery-next' }, 'Next ▶');
    const grid_dl = h('button', { type: 'button', class: 'secondary', id: 'download-grid',
      onclick: (e) => download(`/v1/transfers/${job.id}/gradients`, `${job.id}-gradients.png`, e.target) }, 'Download the grid (PNG)');
    let page = 0;
    let pageUrls = [];
    const show = async (p) => {
      const token = view.token;
      page = Math.max(0, Math.min(pages - 1, p));
      prev.disabled = page === 0;
      next.disabled = page === pages - 1;
      label.textContent = `page ${page + 1} of ${pages} (${count} examples)`;
      for (const u of pageUrls) URL.revokeObjectURL(u);
      pageUrls = [];
      const first = page * GALLERY_PAGE;
      const figs = [];
      for (let i = first; i < Math.min(count, first + GALLERY_PAGE); i++) {
        const img = h('img', { alt: `example ${i}: input, gradient, adversarial example`, 'data-index': i });
        figs.push(h('figure', { 'data-index': i }, img, h('figcaption', {}, `example ${i}: input | gradient | adversarial`)));
      }
      put(grid, ...figs);
      grid.dataset.loading = '1';
      await Promise.all(figs.map(async (fig) => {
        const i = fig.dataset.index;
        const img = fig.querySelector('img');
        try {
          const res = await api(`/v1/transfers/${job.id}/gradients?i=${i}`, { raw: true });
          const blob = await res.blob();
          if (token !== view.token) return;
          const url = URL.createObjectURL(blob);
          pageUrls.push(url);
          view.urls.push(url);
          await new Promise((resolve) => {
            img.addEventListener('load', resolve, { once: true });
            img.addEventListener('error', resolve, { once: true });
            img.src = url;
          });
        } catch (e) {
          put(fig, h('p', { class: 'error' }, e.status === 404 ? `example ${i}: none (past the last map)` : `example ${i}: ${e.message}`));
        }
      }));
      if (token === view.token) delete grid.dataset.loading;
    };
    prev.addEventListener('click', () => show(page - 1));
    next.addEventListener('click', () => show(page + 1));
    card.append(h('div', { class: 'pager' }, prev, label, next, h('span', { class: 'spacer' }), grid_dl), grid);
    show(0);
    return card;
  }

  // ---- comparison --------------------------------------------------------------------------

  async function viewCompare(ids) {
    const token = view.token;
    for (const id of ids) picked.add(id);
    const root = main();
    const pickCard = h('section', { class: 'card', id: 'compare-pick' }, h('h2', {}, 'Compare transfers'), h('p', { class: 'muted' }, 'Loading…'));
    const out = h('section', { class: 'card', id: 'compare-card' });
    root.append(pickCard, out);
    let list;
    try {
      list = await api('/v1/transfers?status=succeeded&kind=all');
    } catch (e) {
      if (e.status !== 401) banner(e.message);
      return;
    }
    if (token !== view.token) return;
    const jobs = newestFirst(list.transfers || []);
    const chosen = new Set(ids);
    const go = () => { location.hash = '#/compare/' + [...chosen].join(','); };
    put(pickCard, h('h2', {}, 'Compare transfers'),
      h('p', { class: 'muted' }, 'Pick finished jobs, e.g. a sweep over lambda_d or a natural against a robust source.'),
      jobs.length ? h('div', { class: 'table-wrap' }, h('table', { id: 'compare-choices' },
        h('thead', {}, h('tr', {}, ['', 'job', 'kind', 'method'].map((c) => h('th', {}, c)),
          h('th', { class: 'num' }, 'clean'), h('th', { class: 'num' }, 'worst case'), h('th', {}, 'created'))),
        h('tbody', {}, jobs.map((j) => h('tr', { 'data-id': j.id },
        h('td', {}, h('input', { type: 'checkbox', 'data-pick': j.id, 'aria-label': `compare ${j.name || j.id}`, checked: chosen.has(j.id),
          onchange: (e) => { if (e.target.checked) { chosen.add(j.id); picked.add(j.id); } else { chosen.delete(j.id); picked.delete(j.id); } go(); } })),
        h('td', {}, jobLink(j)), h('td', {}, j.kind), h('td', {}, j.method), h('td', { class: 'num' }, pct(j.summary && j.summary.clean_accuracy)),
        h('td', { class: 'num' }, pct(j.summary && j.summary.worst_case_accuracy)), h('td', {}, when(j.created_at)))))))
        : h('p', { class: 'empty' }, 'No finished transfers yet.'));
    if (!ids.length) {
      put(out, h('p', { class: 'empty' }, 'Pick two or more transfers above.'));
      return;
    }
    put(out, h('p', { class: 'muted' }, 'Loading the reports…'));
    const rows = await Promise.all(ids.map(async (id) => {
      try {
        const [job, rep] = await Promise.all([api(`/v1/transfers/${encodeURIComponent(id)}`),
          api(`/v1/transfers/${encodeURIComponent(id)}/report`)]);
        return { id, job, rep };
      } catch (e) {
        return { id, error: e };
      }
    }));
    if (token !== view.token) return;
    renderCompare(out, rows);
  }

  function paramText(rep) {
    const p = (rep.spec && rep.spec.params) || {};
    return Object.entries(p).filter(([, v]) => typeof v !== 'object').map(([k, v]) => `${k}=${v}`).join(', ');
  }

  function renderCompare(card, rows) {
    const good = rows.filter((r) => r.rep);
    const names = [];
    for (const r of good) for (const a of (r.rep.evaluation && r.rep.evaluation.attacks) || []) if (!names.includes(a.name)) names.push(a.name);
    const trs = rows.map((r) => {
      if (!r.rep) return h('tr', { 'data-id': r.id }, h('td', { class: 'mono' }, r.id), h('td', { colspan: 5 + names.length, class: 'error' }, r.error.message));
      const ev = r.rep.evaluation || {};
      const byName = new Map((ev.attacks || []).map((a) => [a.name, a]));
      const worst = ev.worst_case ? ev.worst_case.robust_accuracy : null;
      return h('tr', { 'data-id': r.id },
        h('td', {}, jobLink(r.job), h('div', { class: 'muted mono' }, r.id)),
        h('td', {}, r.rep.method || r.job.method),
        h('td', { class: 'mono' }, r.job.backbone || (r.rep.spec && r.rep.spec.backbone) || '—'),
        h('td', { class: 'mono' }, paramText(r.rep) || '—'),
        h('td', { class: 'num', 'data-col': 'clean', 'data-value': ev.clean ? ev.clean.accuracy : null }, pct(ev.clean && ev.clean.accuracy)),
        names.map((n) => h('td', { class: 'num', 'data-col': n, 'data-value': byName.has(n) ? byName.get(n).robust_accuracy : null },
          pct(byName.has(n) ? byName.get(n).robust_accuracy : null))),
        h('td', { class: 'num', 'data-col': 'worst', 'data-value': worst }, pct(worst)));
    });
    const tbl = h('table', { id: 'compare-table' },
      h('thead', {}, h('tr', {}, ['transfer', 'method', 'backbone', 'params'].map((c) => h('th', {}, c)),
        h('th', { class: 'num' }, 'clean'), names.map((n) => h('th', { class: 'num' }, n)), h('th', { class: 'num' }, 'worst case'))),
      h('tbody', {}, trs));
    put(card, h('h2', {}, 'Clean and robust accuracy'), h('div', { class: 'table-wrap' }, tbl), barPlot(good));
  }

  // Grouped bars: for each transfer, clean accuracy beside worst-case robust accuracy.
  function barPlot(rows) {
    if (!rows.length) return h('p', { class: 'empty' }, 'Nothing to plot.');
    const W = Math.max(420, 90 + rows.length * 110), H = 260, L = 46, R = 12, T = 14, B = 44;
    const Y = (v) => T + (1 - v) * (H - T - B);
    const svg = s('svg', { class: 'plot', id: 'compare-plot', viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img',
      'aria-label': 'clean and worst-case robust accuracy per transfer' });
    for (const t of niceTicks(0, 1, 5)) {
      svg.append(s('line', { x1: L, x2: W - R, y1: Y(t), y2: Y(t), stroke: '#eef1f6' }),
        s('text', { x: L - 6, y: Y(t) + 4, 'text-anchor': 'end' }, `${Math.round(t * 100)}%`));
    }
    svg.append(s('line', { x1: L, x2: W - R, y1: Y(0), y2: Y(0), stroke: '#9aa3b5' }));
    const slot = (W - L - R) / rows.length;
    const bw = Math.min(34, slot / 3);
    rows.forEach((r, i) => {
      const ev = r.rep.evaluation || {};
      const vals = [['clean', ev.clean ? ev.clean.accuracy : null, '#2f5fd0'],
        ['robust', ev.worst_case ? ev.worst_case.robust_accuracy : null, '#e07b39']];
      const cx = L + slot * (i + 0.5);
      vals.forEach(([kind, v, color], k) => {
        if (typeof v !== 'number') return;
        const x = k === 0 ? cx - bw - 2 : cx + 2;
        svg.append(s('rect', { x: x.toFixed(1), y: Y(v).toFixed(1), width: bw.toFixed(1), height: (Y(0) - Y(v)).toFixed(1),
          fill: color, 'data-id': r.id, 'data-kind': kind, 'data-value': v }, s('title', {}, `${r.job.name || r.id}: ${kind} ${pct(v)}`)),
        s('text', { x: (x + bw / 2).toFixed(1), y: (Y(v) - 4).toFixed(1), 'text-anchor': 'middle' }, (v * 100).toFixed(1)));
      });
      const name = r.job.name || r.id;
      svg.append(s('text', { x: cx, y: H - B + 16, 'text-anchor': 'middle' }, name.length > 18 ? name.slice(0, 17) + '…' : name),
        s('text', { x: cx, y: H - B + 30, 'text-anchor': 'middle' }, r.rep.method || ''));
    });
    return h('div', {}, svg, h('div', { class: 'legend' },
      h('span', {}, h('span', { class: 'swatch swatch-clean' }), 'clean accuracy'),
      h('span', {}, h('span', { class: 'swatch swatch-robust' }), 'robust accuracy (worst case over the attacks)')));
  }

  // ---- start -------------------------------------------------------------------------------

  document.addEventListener('DOMContentLoaded', () => {
    $('#key-form').addEventListener('submit', onKeySubmit);
    $('#signout').addEventListener('click', () => {
      key = '';
      sessionStorage.removeItem(KEY_STORE);
      showKeyPrompt('');
    });
    window.addEventListener('hashchange', route);
    route();
  });
})();
