// Entry point: read the page config, ask the API what the caller may do, then route hash URLs
// (#/images, #/builds, #/builds/<id>, #/new) to views.

import { Api } from "./api";
import { Tooltip } from "./bootstrap";
import { readConfig } from "./config";
import { type Ctx, Scope, type View } from "./context";
import { h, replace, spinner } from "./dom";
import { may } from "./perms";
import type { Action, ServiceInfo } from "./types";
import { disposeTooltips, errorAlert, refreshTimes } from "./ui";
import { parseHash } from "./util";
import { buildLogView } from "./views/buildlog";
import { buildsView } from "./views/builds";
import { imagesView } from "./views/images";
import { newBuildView } from "./views/newbuild";

function defaultRoute(info: ServiceInfo): string {
  if (may(info, "read")) return "#/images";
  if (may(info, "build")) return "#/new";
  return "#/images"; // shows which scope is missing
}

const notFound: View = (_ctx, route, el) => {
  document.title = "Not found · repo2docker";
  replace(
    el,
    h(
      "div",
      { class: "text-center my-5", "data-testid": "not-found" },
      h("h1", { class: "h4" }, "This page does not exist"),
      h("p", { class: "text-body-secondary" }, `Nothing is at #/${route.path.join("/")}.`),
      h("a", { class: "btn btn-outline-primary", href: "#/images" }, "Go to images"),
    ),
  );
};

function pickView(path: string[]): View {
  switch (path[0]) {
    case "images":
      return path.length === 1 ? imagesView : notFound;
    case "builds":
      if (path.length === 1) return buildsView;
      return path.length === 2 ? buildLogView : notFound;
    case "new":
      return path.length === 1 ? newBuildView : notFound;
    default:
      return notFound;
  }
}

function setupNavbar(info: ServiceInfo): void {
  // Links to views the caller cannot use stay hidden (the views themselves still explain).
  for (const link of document.querySelectorAll<HTMLElement>("[data-r2d-needs]")) {
    link.hidden = !may(info, link.dataset.r2dNeeds as Action);
  }
}

function markActiveNav(section: string): void {
  for (const link of document.querySelectorAll<HTMLAnchorElement>("[data-r2d-route]")) {
    const active = link.dataset.r2dRoute === section;
    link.classList.toggle("active", active);
    if (active) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

async function boot(): Promise<void> {
  const root = document.getElementById("r2d-app");
  if (!root) return;
  const config = readConfig();
  const api = new Api(config);
  replace(root, spinner("Loading repo2docker…"));

  let info: ServiceInfo;
  try {
    info = (await api.get<ServiceInfo>("")).data;
  } catch (err) {
    replace(root, errorAlert(err, "boot-error"));
    return;
  }
  const ctx: Ctx = { config, api, info };
  setupNavbar(info);

  // One delegated Tooltip serves every element rendered later with data-bs-toggle="tooltip".
  new Tooltip(document.body, { selector: '[data-bs-toggle="tooltip"]', trigger: "hover focus" });
  window.setInterval(() => refreshTimes(root), 30_000);

  let scope: Scope | null = null;
  const render = () => {
    const hash = window.location.hash;
    // Other fragments (the "skip to content" link's #r2d-main) are in-page anchors, not routes.
    if (hash && !hash.startsWith("#/") && scope) return;
    const route = parseHash(hash.startsWith("#/") ? hash : "");
    if (route.path.length === 0) {
      window.location.replace(defaultRoute(info));
      return;
    }
    scope?.close();
    disposeTooltips(root);
    scope = new Scope();
    const el = h("div", { class: "r2d-view", "data-view": route.path[0] });
    root.replaceChildren(el);
    markActiveNav(route.path[0] === "builds" && route.path.length > 1 ? "builds" : route.path[0]);
    const view = pickView(route.path);
    const current = scope;
    Promise.resolve(view(ctx, route, el, current)).catch((err) => {
      if (current.alive) replace(el, errorAlert(err));
    });
  };
  window.addEventListener("hashchange", render);
  render();
}

void boot();
