// The dashboard's shell: log-in, navigation (hash routes), and the page of the current route.
import { api, token, logout, el, ApiError } from './api.js';
import { loginPage, overviewPage, mapPage, devicesPage, devicePage, alertsPage, provisionPage } from './pages.js';
import { usersPage } from './admin.js';
import { jobsPage, configurationsPage } from './fleet.js';

const view = document.getElementById('view');
const nav = document.getElementById('nav');
const who = document.getElementById('who');
const logoutButton = document.getElementById('logout');
let cleanup = null;
let me = null;

async function whoAmI() {
  if (!token()) return null;
  try { return await api('GET', '/auth/me'); } catch (e) {
    if (e instanceof ApiError && e.status === 401) { await logout(); return null; }
    throw e;
  }
}

async function route() {
  if (cleanup) { try { cleanup(); } catch { /* ignore */ } cleanup = null; }
  me = await whoAmI();
  if (!me) {
    nav.hidden = true; logoutButton.hidden = true; who.textContent = '';
    loginPage(view, () => { location.hash = '#/overview'; route(); });
    return;
  }
  nav.hidden = false; logoutButton.hidden = false;
  who.textContent = `${me.user} (${me.roles.join(', ') || 'no role'})`;
  who.dataset.user = me.user;
  document.getElementById('nav-users').hidden = !me.permissions.includes('manageUsers');
  const [path, query] = (location.hash.slice(1) || '/overview').split('?');
  const params = new URLSearchParams(query || '');
  const parts = path.split('/').filter(Boolean);
  for (const a of nav.querySelectorAll('a')) a.classList.toggle('active', a.getAttribute('href') === `#/${parts[0]}`);
  try {
    switch (parts[0]) {
      case 'map': cleanup = await mapPage(view); break;
      case 'devices': cleanup = await devicesPage(view, params); break;
      case 'device': cleanup = await devicePage(view, decodeURIComponent(parts.slice(1).join('/'))); break;
      case 'alerts': cleanup = alertsPage(view); break;
      case 'provision': cleanup = provisionPage(view, me); break;
      case 'users': cleanup = await usersPage(view); break;
      case 'jobs': cleanup = await jobsPage(view); break;
      case 'configurations': cleanup = await configurationsPage(view); break;
      default: cleanup = await overviewPage(view);
    }
  } catch (e) {
    view.replaceChildren(el('div', { class: 'error' }, e instanceof ApiError ? e.display : String(e)));
  }
}

logoutButton.addEventListener('click', async () => { await logout(); location.hash = '#/'; route(); });
window.addEventListener('hashchange', route);
route();
