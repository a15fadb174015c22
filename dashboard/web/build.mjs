// Bundles the dashboard into ../dist (app.js, app.css), which the wasmkube binary embeds at
// compile time beside index.html (embedded from here as it is). `--check` bundles in memory and fails when ../dist differs from what
// these sources and package-lock.json produce (CI runs it, so the committed bundle cannot drift).
import * as esbuild from 'esbuild';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join, basename } from 'node:path';

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, '..', 'dist');
const check = process.argv.includes('--check');

const result = await esbuild.build({
  entryPoints: [join(here, 'src', 'main.jsx')],
  bundle: true,
  minify: true,
  format: 'esm',
  target: ['es2022'],
  jsx: 'automatic',
  jsxImportSource: 'preact',
  outdir: dist,
  entryNames: 'app',
  legalComments: 'linked',
  write: false,
  logLevel: 'warning',
});

const files = new Map(result.outputFiles.map((f) => [basename(f.path), Buffer.from(f.contents)]));

let drift = [];
for (const [name, contents] of files) {
  const path = join(dist, name);
  if (check) {
    let have = null;
    try {
      have = readFileSync(path);
    } catch {
      // missing
    }
    if (!have || !have.equals(contents)) drift.push(name);
  } else {
    mkdirSync(dist, { recursive: true });
    writeFileSync(path, contents);
  }
}
if (check && drift.length) {
  console.error(`dashboard/dist is stale (${drift.join(', ')}): run \`npm run build\` in dashboard/web`);
  process.exit(1);
}
console.log(check ? 'dashboard/dist matches its sources' : `wrote ${[...files.keys()].join(', ')} to ${dist}`);
