// Drive the real @jupyterhub/binderhub-client against a build endpoint; one JSON line per event.
//
//   node binder_client.mjs <build endpoint URL> <provider spec> [api token]
//
// As fancy-profiles does: BinderRepository(spec, url, {apiToken, buildOnly: true}).fetch(),
// stop at "ready" (with the image name) or "failed". The package is imported from
// $R2D_BINDER_CLIENT_DIR/node_modules (tests/harness/npm.py installs it there).
import path from "node:path";
import { pathToFileURL } from "node:url";

// fetch-event-source was written for browsers: it reads window.fetch and window.setTimeout, and
// document only for visibility (openWhenHidden, which binderhub-client sets, skips that)
globalThis.window = globalThis;
globalThis.document = { cookie: "", addEventListener() {}, removeEventListener() {} };

const [endpoint, spec, token] = process.argv.slice(2);
const clientPath = path.join(
  process.env.R2D_BINDER_CLIENT_DIR,
  "node_modules/@jupyterhub/binderhub-client/lib/client.js",
);
const { BinderRepository } = await import(pathToFileURL(clientPath).href);

const repo = new BinderRepository(spec, new URL(endpoint), {
  apiToken: token || undefined,
  buildOnly: true,
});
let last = null;
for await (const event of repo.fetch()) {
  process.stdout.write(JSON.stringify(event) + "\n");
  last = event;
  if (event.phase === "ready" || event.phase === "failed") {
    repo.close();
    break;
  }
}
process.exit(last && last.phase === "ready" ? 0 : 1);
