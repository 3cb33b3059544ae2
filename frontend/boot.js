// Loads the wasm app. A separate file, not an inline script, so the CSP can forbid inline code.
import init from '/pkg/apl_frontend.js';
init({ module_or_path: '/pkg/apl_frontend_bg.wasm' });
