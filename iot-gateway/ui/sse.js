// Server-Sent Events read with fetch: EventSource cannot send the Authorization header, and
// the session token must not go into a URL. Reconnects after `retry` ms; events already seen
// (by id, partition-offset) are not delivered twice after a reconnect's replay.
import { token, withVersion } from './api.js';

export function openStream(path, onEvent, onStatus = () => {}) {
  const controller = new AbortController();
  const seen = new Set();
  let retry = 3000;
  let closed = false;

  async function run() {
    while (!closed) {
      try {
        const response = await fetch(withVersion(path), {
          headers: { Accept: 'text/event-stream', Authorization: 'Bearer ' + token() },
          signal: controller.signal,
        });
        if (!response.ok) {
          let message = response.statusText;
          try { const data = await response.json(); message = (data.Message || message).replace(/^ErrorCode:[^;]*;/, ''); } catch { /* not JSON */ }
          onStatus({ state: 'error', status: response.status, message });
          if (response.status === 401 || response.status === 403 || response.status === 404) return;
        } else {
          onStatus({ state: 'open' });
          const reader = response.body.getReader();
          const decoder = new TextDecoder();
          let buffer = '';
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buffer += decoder.decode(value, { stream: true });
            let end;
            while ((end = buffer.indexOf('\n\n')) >= 0) {
              const block = buffer.slice(0, end);
              buffer = buffer.slice(end + 2);
              const event = { event: 'message', data: '', id: null };
              for (const line of block.split('\n')) {
                if (line.startsWith(':')) continue;
                const colon = line.indexOf(':');
                const field = colon < 0 ? line : line.slice(0, colon);
                const val = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
                if (field === 'event') event.event = val;
                else if (field === 'data') event.data += (event.data ? '\n' : '') + val;
                else if (field === 'id') event.id = val;
                else if (field === 'retry' && /^\d+$/.test(val)) retry = Number(val);
              }
              if (!event.data) continue;
              if (event.id) { if (seen.has(event.id)) continue; seen.add(event.id); }
              try { onEvent(event.event, JSON.parse(event.data)); } catch { /* not JSON: skip */ }
            }
          }
          onStatus({ state: 'closed' });
        }
      } catch (e) {
        if (closed) return;
        onStatus({ state: 'error', message: String(e) });
      }
      if (!closed) await new Promise((r) => setTimeout(r, retry));
    }
  }
  run();
  return { close() { closed = true; controller.abort(); } };
}
