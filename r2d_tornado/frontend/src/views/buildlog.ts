// #/builds/<id>: one build with its live log in xterm.js, as BinderHub shows build logs.
//
// The log arrives over an EventSource on api/builds/<id>/logs: `log` events (id = 0-based line
// number), `state` events (the Build), and `done`. We close the EventSource on `done` so it never
// reconnects on its own, and after a dropped connection we open a new one with ?since=<last id + 1>
// ourselves; line ids at or below the last one written are ignored, so no line appears twice.

import { ApiError, errorMessage } from "../api";
import type { Ctx, View } from "../context";
import { type Child, alertBox, h, replace, spinner } from "../dom";
import { icon } from "../icons";
import { may } from "../perms";
import type { LogTerminal } from "../terminal";
import { PHASES, type Phase, phaseIndex, phaseLines, phaseSteps } from "../phases";
import type { Build, Omitted } from "../types";
import {
  disposeTooltips,
  errorAlert,
  imageReference,
  noPermission,
  shaEl,
  stateBadge,
  timeEl,
} from "../ui";
import {
  duration,
  hashFor,
  humanSize,
  isWebUrl,
  repoLabel,
  stripAnsi,
  terminalLine,
} from "../util";
import { cancelBuild } from "./builds";

const LABELS: Record<Phase, string> = {
  queued: "Queued",
  fetching: "Fetching",
  building: "Building",
  pushing: "Pushing",
  done: "Done",
};

function phaseBar(build: Build, reached: number): HTMLElement {
  const steps = phaseSteps(build, reached);
  const lines = phaseLines(steps);
  const doneLabel =
    build.state === "built"
      ? "Built"
      : build.state === "failed"
        ? "Failed"
        : build.state === "cancelled"
          ? "Cancelled"
          : "Done";
  return h(
    "ol",
    {
      class: "r2d-phases",
      "data-testid": "phase-bar",
      "data-state": build.state,
      "aria-label": "Build progress",
    },
    ...PHASES.map((phase, i) => {
      const status = steps[i];
      const mark: Child =
        status === "complete"
          ? icon("check")
          : status === "failed"
            ? icon("failed")
            : status === "cancelled"
              ? icon("cancelled")
              : status === "active"
                ? h("span", { class: "spinner-border r2d-phase-spinner", "aria-hidden": "true" })
                : String(i + 1);
      let label = phase === "done" ? doneLabel : LABELS[phase];
      if (phase === "queued" && status === "active" && typeof build.queue_position === "number") {
        label += ` (#${build.queue_position + 1})`;
      }
      return h(
        "li",
        {
          class: `r2d-phase is-${status}`,
          "data-phase": phase,
          "data-status": status,
          "data-line": lines[i] ? "on" : "off",
          "aria-current": status === "active" ? "step" : null,
        },
        h("span", { class: "r2d-phase-dot" }, mark),
        h(
          "span",
          { class: "r2d-phase-label" },
          label,
          status === "skipped" ? h("span", { class: "visually-hidden" }, " (off)") : null,
        ),
      );
    }),
  );
}

/** an error message: short ones inline, long ones (a whole command line) folded away */
function errorText(error: string | null): Child {
  if (!error) return null;
  const text = stripAnsi(error).trim();
  if (text.length <= 160) return h("p", { class: "mb-2", "data-testid": "build-error-text" }, text);
  return h(
    "details",
    { class: "mb-2", "data-testid": "build-error-text" },
    h("summary", { class: "text-truncate" }, text.slice(0, 120), "…"),
    h("pre", { class: "r2d-pre mt-2 mb-0" }, text),
  );
}

function outcome(build: Build): Child {
  if (build.state === "failed") {
    const lines = (build.last_lines ?? []).map(stripAnsi).join("\n").replace(/\n+$/, "");
    return h(
      "div",
      { class: "alert alert-danger", role: "alert", "data-testid": "build-failed" },
      h("h2", { class: "alert-heading h6" }, icon("failed", "me-2"), "The build failed"),
      errorText(build.error),
      build.failed_step
        ? [
            h("div", { class: "small fw-semibold mt-2" }, "Failed step"),
            h(
              "pre",
              { class: "r2d-pre mb-2", "data-testid": "failed-step" },
              stripAnsi(build.failed_step),
            ),
          ]
        : null,
      lines
        ? [
            h("div", { class: "small fw-semibold" }, "Last lines of the log"),
            h("pre", { class: "r2d-pre mb-0", "data-testid": "last-lines" }, lines),
          ]
        : null,
    );
  }
  if (build.state === "built") {
    return [
      h(
        "div",
        { class: "alert alert-success", role: "status", "data-testid": "build-success" },
        h(
          "h2",
          { class: "alert-heading h6" },
          icon("success", "me-2"),
          "Image built",
          build.push && !build.push_error ? " and pushed to the registry" : "",
        ),
        build.image ? imageReference(build.image) : null,
      ),
      build.push_error
        ? alertBox(
            "warning",
            "push-error",
            icon("warning", "me-2"),
            "The image was built, but pushing it failed: ",
            build.push_error,
          )
        : null,
    ];
  }
  if (build.state === "cancelled") {
    return alertBox(
      "secondary",
      "build-cancelled",
      icon("cancelled", "me-2"),
      "This build was cancelled.",
    );
  }
  return null;
}

/** a pushed build whose record and log could not be stored in the registry (yet) */
function recordNotice(build: Build): Child {
  if (!build.done || !build.record_error) return null;
  return alertBox(
    "warning",
    "record-error",
    h(
      "div",
      { class: "fw-semibold" },
      icon("warning", "me-2"),
      "This build's record and log are not in the registry yet",
    ),
    h(
      "p",
      { class: "mb-0 small", "data-testid": "record-error-text" },
      stripAnsi(build.record_error),
    ),
    h(
      "p",
      { class: "mb-0 small text-body-secondary" },
      "The service keeps trying. Until it succeeds, a service started on an empty Docker engine " +
        "will not show this build in its history.",
    ),
  );
}

type Connection = "connecting" | "live" | "reconnecting" | "complete" | "lost";

const CONNECTION: Record<Connection, { cls: string; text: string }> = {
  connecting: { cls: "text-body-secondary", text: "Connecting…" },
  live: { cls: "text-success", text: "Live" },
  reconnecting: { cls: "text-warning-emphasis", text: "Connection lost, reconnecting…" },
  complete: { cls: "text-body-secondary", text: "Complete" },
  lost: { cls: "text-danger", text: "Disconnected" },
};

async function loadBuild(ctx: Ctx, id: string): Promise<Build> {
  return (await ctx.api.get<Build>(`builds/${encodeURIComponent(id)}`)).data;
}

export const buildLogView: View = async (ctx, route, el, scope) => {
  const id = route.path[1];
  document.title = `Build ${id} · repo2docker`;
  if (!may(ctx.info, "read")) {
    replace(el, noPermission(ctx.info, "read", "see builds here"));
    return;
  }
  replace(el, spinner("Loading the build…"));
  let build: Build;
  try {
    build = await loadBuild(ctx, id);
  } catch (err) {
    if (!scope.alive) return;
    replace(
      el,
      err instanceof ApiError && err.status === 404
        ? h(
            "div",
            { class: "text-center my-5", "data-testid": "build-not-found" },
            h("h1", { class: "h4" }, "No such build"),
            h(
              "p",
              { class: "text-body-secondary" },
              `There is no build ${id} (builds are kept for a while only).`,
            ),
            h("a", { class: "btn btn-outline-primary", href: "#/builds" }, "All builds"),
          )
        : errorAlert(err),
    );
    return;
  }
  if (!scope.alive) return;
  document.title = `${build.owner}/${build.display_name || build.name} · build · repo2docker`;

  // --- skeleton; update() fills the parts that follow the build's state
  const badge = h("span");
  const actions = h("div", { class: "d-flex flex-wrap gap-2" });
  const meta = h("div", { class: "r2d-meta small text-body-secondary mt-1" });
  const phases = h("div", { class: "my-3" });
  const result = h("div", { "aria-live": "polite" });
  const notices = h("div");
  const connection = h("span", {
    class: "small",
    "data-testid": "log-status",
    "data-status": "connecting",
  });
  const counter = h("span", { class: "small text-body-secondary", "data-testid": "log-count" });
  const termEl = h("div", {
    class: "r2d-terminal",
    "data-testid": "log-terminal",
    "data-last-id": "-1",
    "data-lines": "0",
  });
  const logText = h("pre", { hidden: true, "data-testid": "log-text" });
  const truncated = h("div");
  const logsPath = build.logs_url || `api/builds/${encodeURIComponent(id)}/logs`;
  const logsUrl = /^(\/|https?:)/.test(logsPath) ? logsPath : `${ctx.config.base_url}${logsPath}`;
  const withQuery = (url: string, qs: string) => `${url}${url.includes("?") ? "&" : "?"}${qs}`;

  if (route.query.get("joined")) {
    notices.appendChild(
      alertBox(
        "info",
        "build-joined",
        "An identical build was already queued or running: you are following that one.",
      ),
    );
  }

  replace(
    el,
    h(
      "nav",
      { "aria-label": "breadcrumb" },
      h(
        "ol",
        { class: "breadcrumb small mb-2" },
        h("li", { class: "breadcrumb-item" }, h("a", { href: "#/builds" }, "Builds")),
        h("li", { class: "breadcrumb-item active font-monospace", "aria-current": "page" }, id),
      ),
    ),
    h(
      "div",
      { class: "d-flex flex-wrap align-items-start justify-content-between gap-2" },
      h(
        "div",
        null,
        h(
          "h1",
          { class: "h3 mb-0 d-flex align-items-center gap-2 flex-wrap" },
          h("span", null, `${build.owner}/${build.display_name || build.name}`),
          badge,
        ),
        meta,
      ),
      actions,
    ),
    phases,
    notices,
    result,
    truncated,
    h(
      "div",
      { class: "card border-0 shadow-sm overflow-hidden" },
      h(
        "div",
        { class: "card-header d-flex align-items-center gap-3 bg-body-tertiary" },
        h("span", { class: "fw-semibold" }, icon("terminal", "me-2"), "Build log"),
        connection,
        h("span", { class: "ms-auto" }),
        counter,
        h(
          "a",
          {
            class: "btn btn-sm btn-outline-secondary",
            href: withQuery(logsUrl, "format=text&follow=0"),
            target: "_blank",
            rel: "noopener",
            "data-testid": "raw-log",
          },
          icon("download", "me-1"),
          "Raw log",
        ),
      ),
      h("div", { class: "r2d-terminal-wrap" }, termEl),
    ),
    logText,
  );

  let reached = 0;
  let cancelling = false;

  function setConnection(state: Connection): void {
    connection.dataset.status = state;
    connection.className = `small ${CONNECTION[state].cls}`;
    replace(
      connection,
      state === "live" ? h("span", { class: "r2d-live-dot me-1", "aria-hidden": "true" }) : null,
      CONNECTION[state].text,
    );
  }

  function update(next: Build): void {
    build = next;
    if (!build.done) reached = Math.max(reached, phaseIndex(build.state));
    replace(badge, stateBadge(build));
    disposeTooltips(meta);
    replace(
      meta,
      h(
        "span",
        null,
        icon("git", "me-1 r2d-git-icon"),
        isWebUrl(build.repo)
          ? h(
              "a",
              {
                href: build.repo,
                target: "_blank",
                rel: "noopener noreferrer",
                class: "link-secondary",
              },
              repoLabel(build.repo),
            )
          : repoLabel(build.repo),
        `@${build.ref}`,
      ),
      build.sha ? h("span", null, "commit ", shaEl(build.sha)) : null,
      build.requested_by ? h("span", null, "by ", build.requested_by) : null,
      build.options && Object.keys(build.options).length
        ? h(
            "span",
            { "data-testid": "build-options" },
            "options ",
            h("code", null, JSON.stringify(build.options)),
          )
        : null,
      build.annotations && Object.keys(build.annotations).length
        ? h(
            "span",
            { "data-testid": "build-annotations" },
            "annotations ",
            h("code", null, JSON.stringify(build.annotations)),
          )
        : null,
      h("span", null, "created ", timeEl(build.created)),
      build.started
        ? h(
            "span",
            null,
            build.done ? "took " : "running for ",
            h("span", { "data-testid": "build-duration" }, duration(build.started, build.finished)),
          )
        : null,
    );
    replace(phases, phaseBar(build, reached));
    replace(
      actions,
      build.can_cancel && !build.done
        ? h(
            "button",
            {
              type: "button",
              class: "btn btn-outline-danger",
              "data-testid": "cancel-build",
              disabled: cancelling,
              onclick: () => void cancel(),
            },
            icon("cancel", "me-1"),
            cancelling ? "Cancelling…" : "Cancel build",
          )
        : null,
      build.done && may(ctx.info, "build")
        ? h(
            "a",
            {
              class: "btn btn-outline-primary",
              href: hashFor(["new"], {
                repo: build.repo,
                ref: build.ref,
                name: build.display_name || build.name,
                owner: build.owner,
              }),
              "data-testid": "rebuild",
            },
            icon("rebuild", "me-1"),
            "Build again",
          )
        : null,
    );
    replace(result, outcome(build), recordNotice(build));
    watchRecord();
    // the interesting end of the failure, not its start
    const last = result.querySelector('[data-testid="last-lines"]');
    if (last) last.scrollTop = last.scrollHeight;
  }

  // The record of a build that was to push is stored after the build is done (record_error is
  // set later, and cleared by a retry): look again shortly after the end, then every 10 s for as
  // long as it says the record is missing.
  let recordTimer = 0;
  let recordChecks = 0;
  scope.defer(() => window.clearTimeout(recordTimer));
  function watchRecord(): void {
    if (recordTimer || !scope.alive || !build.done) return;
    const early = build.push && recordChecks < 2;
    if (!build.record_error && !early) return;
    const delay = build.record_error ? 10_000 : recordChecks === 0 ? 2_000 : 8_000;
    recordTimer = window.setTimeout(() => {
      recordTimer = 0;
      recordChecks += 1;
      void loadBuild(ctx, id).then(
        (next) => scope.alive && update(next),
        () => undefined,
      );
    }, delay);
  }

  async function cancel(): Promise<void> {
    cancelling = true;
    update(build);
    const problem = await cancelBuild(ctx, build.id);
    cancelling = false;
    if (!scope.alive) return;
    if (problem) {
      notices.appendChild(alertBox("warning", "cancel-error", problem));
      update(build);
      return;
    }
    // the new state also arrives over the stream; ask now so the button reacts at once
    try {
      update(await loadBuild(ctx, build.id));
    } catch {
      update(build);
    }
  }

  update(build);
  // "running for 12s" keeps counting between state changes
  const ticker = window.setInterval(() => {
    const el = meta.querySelector('[data-testid="build-duration"]');
    if (el && build.started && !build.done) el.textContent = duration(build.started, null);
  }, 1000);
  scope.defer(() => window.clearInterval(ticker));

  // --- the terminal (xterm is a chunk of its own, fetched for this view only)
  let term: LogTerminal;
  try {
    const { createTerminal } = await import("../terminal");
    if (!scope.alive) return;
    term = createTerminal(termEl);
  } catch (err) {
    replace(termEl, errorAlert(err, "terminal-error"));
    return;
  }
  scope.defer(() => term.dispose());

  let lastId = -1;
  let lines = 0;
  let omittedLines = 0;
  const count = () => {
    const shown = lines === 1 ? "1 line" : `${lines.toLocaleString("en-US")} lines`;
    counter.textContent = omittedLines
      ? `${shown} (${omittedLines.toLocaleString("en-US")} omitted)`
      : shown;
  };
  const write = (message: string) => {
    term.write(terminalLine(message));
    logText.appendChild(document.createTextNode(`${stripAnsi(message).replace(/\r?\n$/, "")}\n`));
    lines += 1;
    termEl.dataset.lines = String(lines);
    count();
  };
  // The truncation marker: the service keeps a long log's head and tail and sends one `log`
  // event in between that says what it left out. Shown in the terminal as a line of its own
  // (reverse video, so it cannot pass for build output) and as a notice above the log.
  const writeMarker = (message: string, omitted: Omitted) => {
    term.write(terminalLine(`\x1b[1;7;33m ${stripAnsi(message)} \x1b[0m`));
    logText.appendChild(document.createTextNode(`${stripAnsi(message)}\n`));
    termEl.dataset.omitted = String(omitted.lines);
    omittedLines = omitted.lines;
    count();
    const jump = h(
      "button",
      {
        type: "button",
        class: "btn btn-sm btn-outline-secondary ms-2",
        "data-testid": "log-jump-omitted",
        disabled: true,
      },
      "Show in the log",
    );
    void term.markLast().then((mark) => {
      jump.disabled = false;
      jump.addEventListener("click", () => {
        if (!mark.scrollTo()) jump.disabled = true;
      });
    });
    replace(
      truncated,
      alertBox(
        "warning",
        "log-truncated",
        icon("warning", "me-2"),
        `This log is long: ${omitted.lines.toLocaleString("en-US")} lines `,
        `(${humanSize(omitted.bytes)}) in its middle are not kept. `,
        "Its beginning and end are shown; ask your administrator for the whole log.",
        jump,
      ),
    );
  };

  // --- the event stream
  let source: EventSource | null = null;
  let failures = 0;
  let retryTimer = 0;
  let finished = false;
  const stop = () => {
    finished = true;
    window.clearTimeout(retryTimer);
    source?.close();
    source = null;
  };
  scope.defer(stop);

  const connect = () => {
    if (finished || !scope.alive) return;
    // An EventSource cannot send headers: the Hub takes the XSRF token as _xsrf parameter too.
    let url = withQuery(logsUrl, `_xsrf=${encodeURIComponent(ctx.config.xsrf_token)}`);
    if (lastId >= 0) url = withQuery(url, `since=${lastId + 1}`);
    const es = new EventSource(url);
    source = es;
    setConnection(failures ? "reconnecting" : "connecting");
    es.addEventListener("open", () => {
      failures = 0;
      setConnection("live");
    });
    es.addEventListener("log", (event) => {
      const e = event as MessageEvent<string>;
      const n = e.lastEventId === "" ? Number.NaN : Number(e.lastEventId);
      if (Number.isInteger(n)) {
        if (n <= lastId) return; // a line replayed after a reconnect
        lastId = n;
        termEl.dataset.lastId = String(n);
      }
      let data: { phase?: string; message?: string; omitted?: Omitted };
      try {
        data = JSON.parse(e.data);
      } catch {
        data = { message: e.data };
      }
      if (data.omitted && typeof data.omitted.lines === "number") {
        writeMarker(data.message ?? "", data.omitted);
        return;
      }
      write(data.message ?? "");
      const idx = data.phase ? phaseIndex(data.phase) : -1;
      if (idx > reached && idx < PHASES.length - 1) {
        reached = idx;
        replace(phases, phaseBar(build, reached));
      }
    });
    es.addEventListener("state", (event) => {
      try {
        update(JSON.parse((event as MessageEvent<string>).data));
      } catch {
        // a malformed state is not worth breaking the log for
      }
    });
    es.addEventListener("done", (event) => {
      // Close before the server does: an EventSource would otherwise reconnect and replay.
      stop();
      setConnection("complete");
      try {
        update(JSON.parse((event as MessageEvent<string>).data));
      } catch {
        void loadBuild(ctx, id).then(
          (b) => scope.alive && update(b),
          () => undefined,
        );
      }
    });
    es.addEventListener("error", () => {
      if (finished || source !== es) return;
      es.close();
      source = null;
      failures += 1;
      setConnection("reconnecting");
      void recover();
    });
  };

  async function recover(): Promise<void> {
    // After a few failures in a row, ask whether the build is still there to follow at all.
    if (failures >= 3) {
      try {
        update(await loadBuild(ctx, id));
      } catch (err) {
        if (!scope.alive) return;
        if (err instanceof ApiError && [401, 403, 404].includes(err.status)) {
          stop();
          setConnection("lost");
          notices.appendChild(
            alertBox(
              "danger",
              "log-error",
              "The log cannot be followed any more: ",
              errorMessage(err),
            ),
          );
          return;
        }
      }
    }
    if (!scope.alive || finished) return;
    const delay = Math.min(500 * 2 ** (failures - 1), 10_000);
    window.clearTimeout(retryTimer);
    retryTimer = window.setTimeout(connect, delay);
  }

  connect();
};
