// #/builds: recent builds, newest first, a page at a time ("Older builds" appends the next page,
// following the API's `next` cursor); polls every 2 s while any build is still in progress.

import { errorMessage } from "../api";
import type { View } from "../context";
import { h, replace, spinner } from "../dom";
import { icon } from "../icons";
import { may } from "../perms";
import type { Build } from "../types";
import {
  disposeTooltips,
  emptyState,
  errorAlert,
  flash,
  noPermission,
  newBuildButton,
  pageHeader,
  refreshButton,
  shaEl,
  sourceEl,
  stateBadge,
  timeEl,
} from "../ui";
import { duration, hashFor, stripAnsi } from "../util";

/** how often the list is fetched again while a build is in progress */
const POLL_MS = 2000;
/** builds per page (the API's default page); `#/builds?limit=N` asks for N (1 to MAX_PAGE) */
const PAGE = 100;
/** the most a page holds (r2d_core.pages.MAX_LIMIT) */
const MAX_PAGE = 500;

/** one page of `GET api/builds`: `next` is the `before` of the next (older) page, null: none */
interface BuildsPage {
  builds: Build[];
  next: string | null;
}

/** the page size a `#/builds` URL asks for (`?limit=`), else PAGE */
export function pageSize(query: URLSearchParams): number {
  const n = Number(query.get("limit"));
  return Number.isInteger(n) && n >= 1 && n <= MAX_PAGE ? n : PAGE;
}

/** `older` appended to `builds`, without a build shown twice (a page may overlap the last one
 * when the history changed between the two requests) */
function appendPage(builds: Build[], older: Build[]): Build[] {
  const seen = new Set(builds.map((b) => b.id));
  return [...builds, ...older.filter((b) => !seen.has(b.id))];
}

/** Cancel a build; returns the error message, or null when the server accepted it. */
export async function cancelBuild(ctx: Parameters<View>[0], id: string): Promise<string | null> {
  try {
    await ctx.api.delete<Build>(`builds/${encodeURIComponent(id)}`);
    return null;
  } catch (err) {
    return errorMessage(err);
  }
}

/** the marker of a build whose record (and log) could not be stored in the registry yet: the
 * service's message as text (the build page says more) */
export function recordError(b: Build): HTMLElement | null {
  if (!b.done || !b.record_error) return null;
  return h(
    "div",
    {
      class: "r2d-record-error small text-warning-emphasis mt-1",
      "data-testid": "build-record-error",
    },
    icon("warning", "me-1"),
    h("span", { class: "fw-semibold" }, "Record not in the registry: "),
    h("span", { "data-testid": "build-record-error-text" }, stripAnsi(b.record_error)),
  );
}

export const buildsView: View = async (ctx, route, el, scope) => {
  document.title = "Builds · repo2docker";
  if (!may(ctx.info, "read")) {
    replace(el, noPermission(ctx.info, "read", "see builds here"));
    return;
  }
  const canBuild = may(ctx.info, "build");
  const notices = h("div");
  const body = h("div", null, spinner("Loading builds…"));
  const status = h("span", {
    class: "small text-body-secondary align-self-center",
    "aria-live": "polite",
    "data-testid": "builds-status",
  });
  let builds: Build[] = [];
  /** the cursor of the page after the last one shown (null: the list is complete) */
  let next: string | null = null;
  /** pages shown: a refresh fetches as many again, so older builds loaded stay in the list */
  let pages = 1;
  let loadingOlder = false;
  let shown = "";
  let loaded = false;
  // one poll at a time: a Refresh click replaces the pending poll, and only the newest answer counts
  let timer = 0;
  let seq = 0;
  scope.defer(() => window.clearTimeout(timer));
  const schedule = (ms: number) => {
    window.clearTimeout(timer);
    timer = window.setTimeout(() => void load(), ms);
  };

  replace(
    el,
    pageHeader(
      "Builds",
      "Newest first. This list updates by itself while a build is in progress.",
      status,
      refreshButton("refresh-builds", () => void load()),
      canBuild ? newBuildButton() : null,
    ),
    notices,
    body,
  );

  async function cancel(build: Build, button: HTMLButtonElement): Promise<void> {
    button.disabled = true;
    const problem = await cancelBuild(ctx, build.id);
    if (!scope.alive) return;
    if (problem) flash(notices, "warning", "cancel-error", problem);
    await load();
  }

  function row(b: Build): HTMLElement {
    const logHref = hashFor(["builds", b.id]);
    return h(
      "tr",
      { "data-testid": "build-row", "data-build-id": b.id, "data-state": b.state },
      h("td", null, stateBadge(b)),
      h(
        "td",
        null,
        h(
          "a",
          {
            href: logHref,
            class: "fw-semibold text-decoration-none text-nowrap",
            "data-key": `open-${b.id}`,
          },
          `${b.owner}/${b.display_name || b.name}`,
        ),
        b.push
          ? h(
              "span",
              {
                class: "badge text-body-secondary border ms-2",
                "data-bs-toggle": "tooltip",
                "data-bs-title": "Pushed to the registry when built",
              },
              "push",
            )
          : null,
        recordError(b),
      ),
      h("td", { class: "r2d-source" }, sourceEl(b.repo, b.ref)),
      h("td", null, shaEl(b.sha)),
      h("td", null, b.requested_by ?? "—"),
      h("td", { class: "text-nowrap" }, timeEl(b.created)),
      h(
        "td",
        { class: "text-nowrap", "data-duration": b.id },
        b.started ? duration(b.started, b.finished) : "—",
      ),
      h(
        "td",
        { class: "text-end text-nowrap" },
        h(
          "div",
          { class: "d-inline-flex gap-1" },
          h(
            "a",
            {
              class: "btn btn-sm btn-outline-secondary",
              href: logHref,
              "data-testid": "open-log",
              "data-key": `log-${b.id}`,
              "aria-label": `Log of build ${b.id}`,
            },
            icon("terminal", "me-1"),
            "Log",
          ),
          b.can_cancel && !b.done
            ? h(
                "button",
                {
                  type: "button",
                  class: "btn btn-sm btn-outline-danger",
                  "data-testid": "cancel-build",
                  "data-key": `cancel-${b.id}`,
                  "aria-label": `Cancel build ${b.id}`,
                  onclick: (e: Event) => void cancel(b, e.currentTarget as HTMLButtonElement),
                },
                icon("cancel", "me-1"),
                "Cancel",
              )
            : null,
        ),
      ),
    );
  }

  function olderControl(): HTMLElement | null {
    if (!next) return null;
    return h(
      "div",
      { class: "d-flex justify-content-center align-items-center gap-2 mt-3" },
      h(
        "button",
        {
          type: "button",
          class: "btn btn-sm btn-outline-secondary",
          "data-testid": "older-builds",
          "data-key": "older-builds",
          disabled: loadingOlder,
          "aria-busy": loadingOlder ? "true" : null,
          onclick: () => void loadOlder(),
        },
        loadingOlder
          ? h("span", {
              class: "spinner-border spinner-border-sm me-1",
              "aria-hidden": "true",
            })
          : null,
        loadingOlder ? "Loading older builds…" : "Older builds",
      ),
    );
  }

  function focusedKey(): string | null | undefined {
    return (document.activeElement as HTMLElement | null)
      ?.closest?.("[data-key]")
      ?.getAttribute("data-key");
  }

  function draw(focus?: string): void {
    // Keep keyboard focus on the same control across a redraw (or on `focus`).
    const focusKey = focus ?? focusedKey();
    disposeTooltips(body);
    if (!builds.length) {
      replace(
        body,
        emptyState(
          "builds-empty",
          "build",
          "No builds yet",
          null,
          canBuild ? newBuildButton(false, "empty-new-build") : null,
        ),
      );
      return;
    }
    replace(
      body,
      h(
        "div",
        { class: "card shadow-sm border-0" },
        h(
          "div",
          { class: "table-responsive" },
          h(
            "table",
            {
              class: "table table-hover align-middle mb-0 r2d-table",
              "data-testid": "builds-table",
            },
            h(
              "thead",
              null,
              h(
                "tr",
                null,
                ...[
                  "State",
                  "Image",
                  "Repository",
                  "Commit",
                  "Requested by",
                  "Created",
                  "Duration",
                ].map((t) => h("th", { scope: "col" }, t)),
                h(
                  "th",
                  { scope: "col", class: "text-end" },
                  h("span", { class: "visually-hidden" }, "Actions"),
                ),
              ),
            ),
            h("tbody", null, ...builds.map(row)),
          ),
        ),
      ),
      olderControl(),
    );
    if (focusKey) body.querySelector<HTMLElement>(`[data-key="${CSS.escape(focusKey)}"]`)?.focus();
  }

  async function fetchPage(before: string | null): Promise<BuildsPage> {
    const q = route.query;
    const answer = await ctx.api.get<Partial<BuildsPage>>("builds", {
      owner: q.get("owner"),
      state: q.get("state"),
      limit: pageSize(q),
      before,
    });
    return { builds: answer.data.builds ?? [], next: answer.data.next ?? null };
  }

  /** the pages shown so far, fetched again from the newest (a new build moves the rest down: a
   * build may move onto the next page, never out of the list's order) */
  async function load(): Promise<void> {
    window.clearTimeout(timer);
    const mine = ++seq;
    let fresh: Build[] = [];
    let cursor: string | null = null;
    try {
      let fetched = 0;
      do {
        const page = await fetchPage(cursor);
        if (mine !== seq) return;
        fresh = appendPage(fresh, page.builds);
        cursor = page.next;
        fetched += 1;
      } while (cursor && fetched < pages);
    } catch (err) {
      if (!scope.alive || mine !== seq) return;
      if (!loaded) replace(body, errorAlert(err));
      else status.textContent = `Could not refresh: ${errorMessage(err)}`;
      // keep trying while something was running: the service may be restarting
      if (builds.some((b) => !b.done)) schedule(POLL_MS * 2);
      return;
    }
    if (!scope.alive) return;
    builds = fresh;
    next = cursor;
    loaded = true;
    show();
  }

  /** "Older builds": the page after the last one shown, appended */
  async function loadOlder(): Promise<void> {
    if (!next || loadingOlder) return;
    window.clearTimeout(timer); // a poll's answer would not have this page
    const mine = ++seq;
    // pressed from the keyboard: focus goes on to the first build of the page it adds (the
    // button is disabled while it loads, and gone after the last page)
    const focused = focusedKey() === "older-builds";
    loadingOlder = true;
    // counted now: a refresh starting while this page loads fetches it too, so the page the
    // user asked for is not lost when the refresh's list replaces this answer
    pages += 1;
    shown = "";
    draw();
    let page: BuildsPage;
    try {
      page = await fetchPage(next);
    } catch (err) {
      if (!scope.alive) return;
      loadingOlder = false;
      pages -= 1;
      flash(notices, "warning", "older-error", `Could not load older builds: ${errorMessage(err)}`);
      show();
      return;
    }
    if (!scope.alive) return;
    loadingOlder = false;
    if (mine !== seq) {
      show(); // a refresh started meanwhile: its list (which has this page) counts
      return;
    }
    const before = builds.length;
    builds = appendPage(builds, page.builds);
    next = page.next;
    show(focused && builds[before] ? `open-${builds[before].id}` : undefined);
  }

  function show(focus?: string): void {
    const json = JSON.stringify([builds, next, loadingOlder]);
    if (json !== shown) {
      shown = json;
      draw(focus);
    } else {
      // the rows are the same, but running durations move on
      for (const b of builds) {
        const cell = body.querySelector(`[data-duration="${CSS.escape(b.id)}"]`);
        if (cell && b.started) cell.textContent = duration(b.started, b.finished);
      }
    }
    const running = builds.filter((b) => !b.done).length;
    status.textContent = running ? `${running} in progress · updating…` : "";
    if (running) schedule(POLL_MS);
  }

  await load();
};
