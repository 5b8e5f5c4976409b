// Building blocks shared by the views: badges, times, alerts, dialogs, the no-permission page.

import { ApiError, errorMessage } from "./api";
import { Modal, Tooltip } from "./bootstrap";
import { type Child, alertBox, h } from "./dom";
import { type IconName, icon } from "./icons";
import type { Action, Build, BuildState, ServiceInfo } from "./types";
import { absoluteTime, copyText, isWebUrl, relativeTime, repoLabel, shortSha } from "./util";

/** a relative time with the exact time as tooltip; refreshed by refreshTimes() */
export function timeEl(iso: string | null | undefined): HTMLElement {
  if (!iso) return h("span", { class: "text-body-secondary" }, "—");
  return h(
    "time",
    {
      class: "r2d-time",
      datetime: iso,
      "data-bs-toggle": "tooltip",
      "data-bs-title": absoluteTime(iso),
    },
    relativeTime(iso),
  );
}

/** keep "3 minutes ago" true while a page stays open */
export function refreshTimes(root: ParentNode = document): void {
  for (const el of root.querySelectorAll<HTMLTimeElement>("time.r2d-time")) {
    el.textContent = relativeTime(el.dateTime);
  }
}

/** drop the Tooltip objects (and any tooltip on screen) of elements about to be removed */
export function disposeTooltips(root: ParentNode): void {
  for (const el of root.querySelectorAll<HTMLElement>('[data-bs-toggle="tooltip"]')) {
    Tooltip.getInstance(el)?.dispose();
  }
}

/** repo@ref on one line; a long URL is cut with an ellipsis, the ref stays (the tooltip has all) */
export function sourceEl(repo: string | null, ref: string | null): HTMLElement {
  const full = `${repo ?? "—"}${ref ? `@${ref}` : ""}`;
  const label = h(
    "span",
    { class: "r2d-source-label", "data-bs-toggle": "tooltip", "data-bs-title": full },
    h("span", { class: "text-truncate" }, repoLabel(repo)),
    ref ? h("span", { class: "text-body-secondary text-nowrap" }, `@${ref}`) : null,
  );
  if (!isWebUrl(repo)) return label;
  return h(
    "a",
    {
      href: repo as string,
      target: "_blank",
      rel: "noopener noreferrer",
      class: "link-body-emphasis link-underline-opacity-25",
    },
    label,
  );
}

/** a short commit sha with the full one as tooltip */
export function shaEl(sha: string | null): HTMLElement {
  return sha
    ? h(
        "code",
        { class: "r2d-sha", "data-bs-toggle": "tooltip", "data-bs-title": sha },
        shortSha(sha),
      )
    : h("span", { class: "text-body-secondary" }, "—");
}

const STATE_STYLE: Record<BuildState, { cls: string; busy: boolean; label: string }> = {
  queued: { cls: "text-bg-secondary", busy: false, label: "queued" },
  fetching: { cls: "text-bg-primary", busy: true, label: "fetching" },
  building: { cls: "text-bg-primary", busy: true, label: "building" },
  pushing: { cls: "text-bg-primary", busy: true, label: "pushing" },
  built: { cls: "text-bg-success", busy: false, label: "built" },
  failed: { cls: "text-bg-danger", busy: false, label: "failed" },
  cancelled: { cls: "text-bg-dark", busy: false, label: "cancelled" },
};

export function stateBadge(build: Pick<Build, "state" | "queue_position">): HTMLElement {
  const style = STATE_STYLE[build.state] ?? {
    cls: "text-bg-light",
    busy: false,
    label: build.state,
  };
  let label = style.label;
  if (build.state === "queued" && typeof build.queue_position === "number") {
    label += ` · #${build.queue_position + 1}`;
  }
  return h(
    "span",
    {
      class: `badge rounded-pill r2d-state ${style.cls}`,
      "data-testid": "build-state",
      "data-state": build.state,
    },
    style.busy
      ? h("span", { class: "spinner-border r2d-badge-spinner me-1", "aria-hidden": "true" })
      : null,
    label,
  );
}

export function locationBadges(
  item: { local: boolean; pushed: boolean },
  stacked = false,
): HTMLElement {
  return h(
    "span",
    { class: `d-inline-flex gap-1 ${stacked ? "flex-column align-items-start" : ""}` },
    item.pushed
      ? h(
          "span",
          {
            class: "badge text-success-emphasis bg-success-subtle border border-success-subtle",
            "data-testid": "badge-pushed",
            "data-bs-toggle": "tooltip",
            "data-bs-title": "In the registry",
          },
          icon("pushed", "me-1"),
          "pushed",
        )
      : null,
    item.local
      ? h(
          "span",
          {
            class:
              "badge text-secondary-emphasis bg-secondary-subtle border border-secondary-subtle",
            "data-testid": "badge-local",
            "data-bs-toggle": "tooltip",
            "data-bs-title": "On the build host's container engine",
          },
          icon("local", "me-1"),
          "local",
        )
      : null,
  );
}

export function pageHeader(title: string, subtitle: Child, ...actions: Child[]): HTMLElement {
  return h(
    "div",
    { class: "d-flex flex-wrap align-items-end justify-content-between gap-2 mb-3" },
    h(
      "div",
      null,
      h("h1", { class: "h3 mb-1" }, title),
      subtitle ? h("p", { class: "text-body-secondary mb-0" }, subtitle) : null,
    ),
    h("div", { class: "d-flex flex-wrap gap-2" }, ...actions),
  );
}

/** the "Refresh" button of a list page */
export function refreshButton(testid: string, onclick: () => void): HTMLButtonElement {
  return h(
    "button",
    { type: "button", class: "btn btn-sm btn-outline-secondary", "data-testid": testid, onclick },
    icon("refresh", "me-1"),
    "Refresh",
  );
}

/** the link to the build form, styled as the page's main action */
export function newBuildButton(small = true, testid = "new-build"): HTMLAnchorElement {
  return h(
    "a",
    {
      class: small ? "btn btn-sm btn-jupyter" : "btn btn-jupyter",
      href: "#/new",
      "data-testid": testid,
    },
    icon("plus", "me-1"),
    "Build an image",
  );
}

/** a list page with nothing in it yet */
export function emptyState(
  testid: string,
  iconName: IconName,
  title: string,
  text: string | null,
  action: Child = null,
): HTMLElement {
  return h(
    "div",
    { class: "card shadow-sm border-0", "data-testid": testid },
    h(
      "div",
      { class: "card-body text-center py-5" },
      h("div", { class: "display-6 text-body-secondary mb-2" }, icon(iconName)),
      h("h2", { class: "h5" }, title),
      text ? h("p", { class: "text-body-secondary" }, text) : null,
      action,
    ),
  );
}

export function errorAlert(err: unknown, testid = "error"): HTMLElement {
  const loggedOut = err instanceof ApiError && err.status === 401;
  return alertBox(
    "danger",
    testid,
    icon("warning", "me-2"),
    errorMessage(err),
    loggedOut
      ? [
          " ",
          h(
            "a",
            {
              href: window.location.href,
              class: "alert-link",
              onclick: () => window.location.reload(),
            },
            "Reload",
          ),
        ]
      : null,
  );
}

const VERBS: Record<Action, string> = {
  read: "see images and builds here",
  build: "build images here",
  delete: "delete images here",
};

/** the friendly page for a caller without the scope ``action`` needs (never raw JSON) */
export function noPermission(info: ServiceInfo, action: Action, what?: string): HTMLElement {
  const scope = info.scopes?.[action] ?? `custom:repo2docker:${action}`;
  return h(
    "div",
    {
      class: "card border-0 shadow-sm mx-auto my-4 r2d-narrow",
      "data-testid": "no-permission",
      "data-scope": scope,
    },
    h(
      "div",
      { class: "card-body p-4 text-center" },
      h("div", { class: "display-6 text-body-secondary mb-3" }, icon("lock")),
      h("h1", { class: "h4" }, "You don't have access to this yet"),
      h(
        "p",
        { class: "mb-2" },
        "You need the ",
        h("code", { class: "user-select-all" }, scope),
        ` scope to ${what ?? VERBS[action]}.`,
      ),
      h("p", { class: "text-body-secondary mb-0" }, "Ask a Hub admin to grant it to you."),
    ),
  );
}

/** a button that copies ``text`` and says so */
export function copyButton(text: string, label = "Copy", testid = "copy"): HTMLButtonElement {
  const button: HTMLButtonElement = h(
    "button",
    {
      type: "button",
      class: "btn btn-outline-secondary btn-sm text-nowrap",
      "data-testid": testid,
      "aria-label": `${label}: ${text}`,
      onclick: async () => {
        const ok = await copyText(text);
        button.replaceChildren(
          icon(ok ? "check" : "warning", "me-1"),
          ok ? "Copied" : "Copy failed",
        );
        window.setTimeout(() => button.replaceChildren(icon("copy", "me-1"), label), 1800);
      },
    },
    icon("copy", "me-1"),
    label,
  );
  return button;
}

/** an image reference in a read-only input with a copy button */
export function imageReference(ref: string): HTMLElement {
  return h(
    "div",
    { class: "input-group input-group-sm r2d-ref" },
    h("input", {
      class: "form-control font-monospace",
      value: ref,
      readonly: true,
      "aria-label": "Image reference",
      "data-testid": "image-reference",
      onfocus: (e: Event) => (e.target as HTMLInputElement).select(),
    }),
    copyButton(ref, "Copy", "copy-image"),
  );
}

export interface ConfirmOptions {
  title: string;
  body: Child;
  confirmLabel: string;
}

/** a Bootstrap confirm modal; resolves true only when the danger button was pressed */
export function confirmDialog(options: ConfirmOptions): Promise<boolean> {
  return new Promise((resolve) => {
    let confirmed = false;
    const titleId = `r2d-modal-title-${Date.now()}`;
    const confirm = h(
      "button",
      { type: "button", class: "btn btn-danger", "data-testid": "confirm-delete" },
      icon("trash", "me-1"),
      options.confirmLabel,
    );
    const el = h(
      "div",
      {
        class: "modal fade",
        tabindex: "-1",
        "aria-labelledby": titleId,
        "aria-hidden": "true",
        "data-testid": "confirm-dialog",
      },
      h(
        "div",
        { class: "modal-dialog modal-dialog-centered" },
        h(
          "div",
          { class: "modal-content" },
          h(
            "div",
            { class: "modal-header" },
            h("h2", { class: "modal-title fs-5", id: titleId }, options.title),
            h("button", {
              type: "button",
              class: "btn-close",
              "data-bs-dismiss": "modal",
              "aria-label": "Close",
            }),
          ),
          h("div", { class: "modal-body" }, options.body),
          h(
            "div",
            { class: "modal-footer" },
            h(
              "button",
              {
                type: "button",
                class: "btn btn-outline-secondary",
                "data-bs-dismiss": "modal",
                "data-testid": "cancel-delete",
              },
              "Keep it",
            ),
            confirm,
          ),
        ),
      ),
    );
    document.body.appendChild(el);
    const modal = new Modal(el);
    confirm.addEventListener("click", () => {
      confirmed = true;
      modal.hide();
    });
    el.addEventListener("shown.bs.modal", () => confirm.focus());
    el.addEventListener("hidden.bs.modal", () => {
      modal.dispose();
      el.remove();
      resolve(confirmed);
    });
    modal.show();
  });
}

/** a dismissible notice at the top of the page content (results of deletes and the like) */
export function flash(
  container: HTMLElement,
  kind: "success" | "warning" | "danger" | "info",
  testid: string,
  ...children: Child[]
): HTMLElement {
  const box = h(
    "div",
    {
      class: `alert alert-${kind} alert-dismissible fade show`,
      role: kind === "danger" ? "alert" : "status",
      "data-testid": testid,
    },
    ...children,
    h("button", {
      type: "button",
      class: "btn-close",
      "aria-label": "Close",
      onclick: () => box.remove(),
    }),
  );
  container.prepend(box);
  return box;
}
