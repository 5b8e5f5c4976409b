// #/builds: recent builds, newest first; polls every 2 s while any build is still in progress.

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
import { duration, hashFor } from "../util";

/** how often the list is fetched again while a build is in progress */
const POLL_MS = 2000;

/** Cancel a build; returns the error message, or null when the server accepted it. */
export async function cancelBuild(ctx: Parameters<View>[0], id: string): Promise<string | null> {
  try {
    await ctx.api.delete<Build>(`builds/${encodeURIComponent(id)}`);
    return null;
  } catch (err) {
    return errorMessage(err);
  }
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

  function draw(): void {
    // Keep keyboard focus on the same control across a redraw.
    const focusKey = (document.activeElement as HTMLElement | null)
      ?.closest?.("[data-key]")
      ?.getAttribute("data-key");
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
    );
    if (focusKey) body.querySelector<HTMLElement>(`[data-key="${CSS.escape(focusKey)}"]`)?.focus();
  }

  async function load(): Promise<void> {
    window.clearTimeout(timer);
    const mine = ++seq;
    try {
      const q = route.query;
      const answer = await ctx.api.get<{ builds: Build[] }>("builds", {
        owner: q.get("owner"),
        state: q.get("state"),
        limit: 500, // the most a page holds (r2d_core.pages.MAX_LIMIT); history is 200 by default
      });
      if (mine !== seq) return;
      builds = answer.data.builds ?? [];
    } catch (err) {
      if (!scope.alive || mine !== seq) return;
      if (!loaded) replace(body, errorAlert(err));
      else status.textContent = `Could not refresh: ${errorMessage(err)}`;
      // keep trying while something was running: the service may be restarting
      if (builds.some((b) => !b.done)) schedule(POLL_MS * 2);
      return;
    }
    if (!scope.alive) return;
    loaded = true;
    const json = JSON.stringify(builds);
    if (json !== shown) {
      shown = json;
      draw();
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
