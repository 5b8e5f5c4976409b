// Bundle the UI with esbuild into ../static/dist: app.js (an ES module; xterm.js is split into a
// chunk the log view loads on demand) and app.css (Bootstrap + xterm + our rules). No CDN: every
// byte the page needs comes from these files. `node build.mjs --watch` rebuilds on change.

import { rm } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = path.dirname(fileURLToPath(import.meta.url));
const outdir = path.resolve(here, "..", "static", "dist");
const watch = process.argv.includes("--watch");

/** @type {import("esbuild").BuildOptions} */
const options = {
  absWorkingDir: here,
  entryPoints: [
    { in: "src/main.ts", out: "app" },
    { in: "src/app.css", out: "app" },
  ],
  outdir,
  bundle: true,
  format: "esm",
  splitting: true,
  chunkNames: "chunks/[name]-[hash]",
  minify: !watch,
  sourcemap: watch ? "inline" : false,
  target: ["es2020", "chrome100", "firefox100", "safari15"],
  loader: { ".svg": "text", ".woff": "file", ".woff2": "file" },
  legalComments: "linked",
  logLevel: "info",
};

// Old chunks would pile up otherwise (their names carry content hashes).
await rm(outdir, { recursive: true, force: true });

if (watch) {
  const context = await esbuild.context(options);
  await context.watch();
} else {
  await esbuild.build(options);
}
