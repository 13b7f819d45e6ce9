// Builds dist/distribus-client.iife.js: the ES module as one classic script
// that sets `globalThis.distribus` (for a <script> tag), with no bundler:
// the module has no imports but the `ws` fallback, which browsers never take.
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const source = readFileSync(join(root, 'src/index.js'), 'utf8');
const body = source
  .replace(/^export default .*$/m, '')
  .replace(/^export (class|async function|function|const) /gm, '$1 ');
if (/^\s*(import|export)\s/m.test(body)) {
  throw new Error('the module gained an import or export the bundle cannot carry');
}
const bundle = `// distribus-client (built from src/index.js by scripts/build.mjs)
(function () {
${body}
globalThis.distribus = { connect, DistribusError, Host, Peer };
})();
`;
mkdirSync(join(root, 'dist'), { recursive: true });
writeFileSync(join(root, 'dist/distribus-client.iife.js'), bundle);
console.log(`dist/distribus-client.iife.js: ${bundle.length} bytes`);
