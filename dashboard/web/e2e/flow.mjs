// The dashboard's user flows in headless Chromium (Playwright), against a running cluster:
// sign in, see a pod that `kubectl run` made go Running, follow its log, scale a Deployment
// from the page and see kubectl agree, and keep screenshots.
//
// Environment: DASHBOARD_URL, TOKEN, KUBECONFIG, KUBECTL, IMAGE (the toolbox sample),
// ARTIFACTS (a directory for screenshots), CHROMIUM (default /usr/bin/chromium).
import { chromium } from 'playwright-core';
import { execFile } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';

const env = (k, d) => {
  const v = process.env[k] ?? d;
  if (v === undefined) throw new Error(`${k} is not set`);
  return v;
};
const url = env('DASHBOARD_URL');
const artifacts = env('ARTIFACTS');
const image = env('IMAGE');
mkdirSync(artifacts, { recursive: true });

const run = promisify(execFile);
async function kubectl(...args) {
  const { stdout } = await run(env('KUBECTL'), ['--kubeconfig', env('KUBECONFIG'), ...args], {
    timeout: 60_000,
  });
  return stdout.trim();
}

/** Waits (up to `ms`) until `fn` resolves truthy. */
async function until(what, fn, ms = 60_000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`timed out waiting for ${what} (last: ${last})`);
}

const step = (s) => console.log(`· ${s}`);

const browser = await chromium.launch({
  executablePath: env('CHROMIUM', '/usr/bin/chromium'),
  args: ['--headless', '--no-sandbox', '--disable-background-networking'],
});
try {
  const context = await browser.newContext({
    ignoreHTTPSErrors: true,
    viewport: { width: 1440, height: 900 },
  });
  const page = await context.newPage();
  page.setDefaultTimeout(60_000);
  const consoleErrors = [];
  page.on('pageerror', (e) => consoleErrors.push(String(e)));

  step('a wrong token is refused');
  await page.goto(url);
  await page.getByTestId('token').fill('not-a-token');
  await page.getByTestId('signin').click();
  await page.getByTestId('signin-error').waitFor();

  step('sign in with the admin token');
  await page.getByTestId('token').fill(env('TOKEN'));
  await page.getByTestId('signin').click();
  await page.getByTestId('user').waitFor();
  const user = await page.getByTestId('user').textContent();
  if (!user || user === 'unknown') throw new Error(`signed in as ${user}`);

  step('the overview shows the node and its charts');
  await page.locator('[data-testid="nodes"] tbody tr').first().waitFor();
  await page.getByTestId('chart-cpu').locator('canvas').waitFor();

  step('kubectl run: the pod appears and goes Running, from the watch');
  await page.getByTestId('nav-pods').click();
  await kubectl('run', 'ticker', `--image=${image}`, '--restart=Never', '--', 'tick', '200');
  const row = page.getByTestId('pod-ticker');
  await row.waitFor();
  await until('ticker Running on the page', async () =>
    (await row.getByTestId('status').textContent()) === 'Running');

  step('follow its log: new lines keep arriving');
  await row.click();
  const log = page.getByTestId('log');
  await until('tick 3 in the log', async () => (await log.textContent()).includes('tick 3\n'));
  const seen = (await log.textContent()).match(/tick (\d+)\n/g).length;
  await until('ten more lines', async () =>
    (await log.textContent()).includes(`tick ${seen + 10}\n`), 30_000);
  await page.getByTestId('events').locator('tbody tr').first().waitFor();
  await page.screenshot({ path: join(artifacts, 'pods.png') });

  step('scale a Deployment from the page; kubectl agrees');
  await kubectl('create', 'deployment', 'web', `--image=${image}`, '--replicas=1', '--', '/toolbox', 'forever');
  await page.getByTestId('nav-deployments').click();
  const web = page.getByTestId('deployment-web');
  await until('web 1/1', async () => (await web.getByTestId('ready').textContent()) === '1/1');
  await page.getByTestId('replicas-web').fill('3');
  await page.getByTestId('scale-web').click();
  await until('kubectl sees 3 replicas', async () =>
    (await kubectl('get', 'deployment', 'web', '-o', 'jsonpath={.spec.replicas}')) === '3');
  await until('web 3/3 on the page', async () =>
    (await web.getByTestId('ready').textContent()) === '3/3');
  await web.getByRole('link', { name: 'web' }).click();
  await page.getByTestId('history-web').locator('tbody tr').first().waitFor();
  await page.screenshot({ path: join(artifacts, 'deployments.png') });

  step('services list their ready endpoints; the registry lists its images');
  await kubectl('expose', 'deployment', 'web', '--port=80');
  await page.getByTestId('nav-networking').click();
  await until('web has 3 endpoints', async () => {
    const text = await page.getByTestId('service-web').getByTestId('endpoints').textContent();
    return text.split(', ').filter((e) => /^[0-9.]+:80$/.test(e)).length === 3;
  });
  await page.getByTestId('nav-images').click();
  await until('toolbox in the registry', async () =>
    (await page.getByTestId('images').textContent()).includes('toolbox'));

  step('overview screenshot');
  await page.getByTestId('nav-overview').click();
  await until('running pods counted', async () =>
    Number(await page.getByTestId('running-pods').textContent()) >= 4);
  await page.screenshot({ path: join(artifacts, 'overview.png') });

  step("a service account's token sees its own namespace only");
  await kubectl('create', 'serviceaccount', 'viewer');
  await kubectl('create', 'rolebinding', 'viewer', '--clusterrole=view', '--serviceaccount=default:viewer');
  const viewer = await kubectl('create', 'token', 'viewer');
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByTestId('token').fill(viewer);
  await page.getByTestId('signin').click();
  await until('signed in as the service account', async () =>
    (await page.getByTestId('user').textContent()) === 'system:serviceaccount:default:viewer');
  await page.getByTestId('nav-pods').click();
  await page.getByTestId('scoped').waitFor();
  await until('ticker Running in the scoped view', async () =>
    (await page.getByTestId('pod-ticker').getByTestId('status').textContent()) === 'Running');

  if (consoleErrors.length) throw new Error(`page errors: ${consoleErrors.join('; ')}`);
  console.log('dashboard flows passed');
} finally {
  await browser.close();
}
