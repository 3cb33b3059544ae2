// Loads the wasm app: the rater workspace's own smaller build on /rate, the whole app elsewhere.
// A separate file, not an inline script, so the CSP can forbid inline code.
const base = location.pathname.replace(/\/+$/, '') === '/rate' ? '/pkg-rater/apl_frontend' : '/pkg/apl_frontend';
const { default: init } = await import(`${base}.js`);
await init({ module_or_path: `${base}_bg.wasm` });
