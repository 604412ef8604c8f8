// User management for admins: users, their role over a device set.
import { api, el, ApiError } from './api.js';

const problem = (e) => el('div', { class: 'error' }, e instanceof ApiError ? e.display : String(e));

function describeSet(devices) {
  if (devices === 'all') return 'all devices';
  if (devices.device) return `device ${devices.device}`;
  if (devices.query) return `query ${devices.query}`;
  if (devices.node) return `node ${devices.node}`;
  return JSON.stringify(devices);
}

export async function usersPage(view) {
  const out = el('div', { id: 'users-result' });
  const list = el('div');
  const name = el('input', { id: 'new-user-name', required: true, autocomplete: 'off' });
  const password = el('input', { id: 'new-user-password', type: 'password', required: true, minlength: '8', autocomplete: 'new-password' });
  const role = el('select', { id: 'new-user-role' }, ['viewer', 'operator', 'admin'].map((r) => el('option', { value: r }, r)));
  const scope = el('select', { id: 'new-user-scope' }, el('option', { value: 'all' }, 'all devices'), el('option', { value: 'device' }, 'one device'), el('option', { value: 'query' }, 'registry query'), el('option', { value: 'node' }, 'hierarchy node'));
  const scopeValue = el('input', { id: 'new-user-scope-value', placeholder: 'device id / WHERE … / building=HQ' });

  const refresh = async () => {
    try {
      const users = await api('GET', '/access/users');
      list.replaceChildren(el('table', { id: 'users-table' },
        el('tr', {}, el('th', {}, 'user'), el('th', {}, 'grants'), el('th', {}, 'state'), el('th', {})),
        users.map((u) => el('tr', { 'data-user': u.name }, el('td', {}, u.name),
          el('td', {}, u.grants.map((g) => `${g.role} over ${describeSet(g.devices)}`).join('; ') || '—'),
          el('td', {}, u.disabled ? 'disabled' : 'enabled'),
          el('td', {},
            el('button', { type: 'button', class: 'secondary', onclick: () => act(() => api('PATCH', `/access/users/${encodeURIComponent(u.name)}`, { disabled: !u.disabled })) }, u.disabled ? 'Enable' : 'Disable'), ' ',
            el('button', { type: 'button', class: 'danger', onclick: () => { if (confirm(`Delete ${u.name}?`)) act(() => api('DELETE', `/access/users/${encodeURIComponent(u.name)}`)); } }, 'Delete'))))));
    } catch (e) { list.replaceChildren(problem(e)); }
  };
  const act = async (fn) => { out.replaceChildren(); try { await fn(); } catch (e) { out.append(problem(e)); } await refresh(); };
  const form = el('form', { id: 'new-user-form', onsubmit: (ev) => { ev.preventDefault(); act(async () => {
    let devices = 'all';
    if (scope.value !== 'all') devices = { [scope.value]: scopeValue.value.trim() };
    const u = await api('POST', '/access/users', { name: name.value.trim(), password: password.value, grants: [{ role: role.value, devices }] });
    password.value = '';
    out.append(el('div', { class: 'ok' }, `created ${u.name}`));
  }); } }, el('label', {}, 'Name', name), el('label', {}, 'Password', password), el('label', {}, 'Role', role), el('label', {}, 'Over', scope), el('label', {}, 'Which', scopeValue),
  el('button', { type: 'submit', id: 'create-user' }, 'Create user'));
  view.replaceChildren(el('h1', {}, 'Users'), el('section', { class: 'card' }, el('h2', {}, 'New user'), form), out, list);
  await refresh();
}
