// Evaluate calls into test/pure.ts for the Python tests: reads [[fn, ...args], ...] as JSON on
// stdin, writes [{"ok": result} | {"error": message}, ...] as JSON on stdout.

import path from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = path.dirname(fileURLToPath(import.meta.url));
const bundle = await esbuild.build({
  entryPoints: [path.join(here, "pure.ts")],
  bundle: true,
  format: "esm",
  platform: "node",
  write: false,
  logLevel: "error",
});
const mod = await import(
  `data:text/javascript;base64,${Buffer.from(bundle.outputFiles[0].text).toString("base64")}`
);

let input = "";
for await (const chunk of process.stdin) input += chunk;
const results = JSON.parse(input).map(([fn, ...args]) => {
  if (typeof mod[fn] !== "function") return { error: `no function ${fn}` };
  try {
    return { ok: mod[fn](...args) ?? null };
  } catch (err) {
    return { error: String(err) };
  }
});
process.stdout.write(JSON.stringify(results));
