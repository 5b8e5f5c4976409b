// #/images: every image the caller may see, with its versions, Rebuild and Delete.

import { errorMessage } from "../api";
import type { View } from "../context";
import { type Child, h, replace, spinner } from "../dom";
import { icon } from "../icons";
import { may } from "../perms";
import type { DeleteResult, Image, ImageVersion } from "../types";
import {
  confirmDialog,
  disposeTooltips,
  emptyState,
  errorAlert,
  flash,
  locationBadges,
  noPermission,
  newBuildButton,
  pageHeader,
  refreshButton,
  shaEl,
  sourceEl,
  timeEl,
} from "../ui";
import { hashFor, humanSize, launchHref, shortSha } from "../util";

interface ImagesAnswer {
  images: Image[];
  warnings?: string[];
}

const keyOf = (img: Pick<Image, "owner" | "name">) => `${img.owner}/${img.name}`;

function describeErrors(errors: unknown[]): string[] {
  return errors.map((e) => {
    if (typeof e === "string") return e;
    if (e && typeof e === "object" && "message" in e)
      return String((e as { message: unknown }).message);
    return JSON.stringify(e);
  });
}

export const imagesView: View = async (ctx, route, el, scope) => {
  document.title = "Images · repo2docker";
  if (!may(ctx.info, "read")) {
    replace(el, noPermission(ctx.info, "read", "see images here"));
    return;
  }
  const canBuild = may(ctx.info, "build");
  const ownerFilter = route.query.get("owner");
  const focus = route.query.get("image");
  const expanded = new Set<string>(focus ? [focus] : []);
  let images: Image[] = [];
  let needle = "";

  const notices = h("div", { "data-testid": "images-notices" });
  const warnings = h("div");
  const body = h("div", null, spinner("Loading images…"));
  const search = h("input", {
    type: "search",
    class: "form-control form-control-sm r2d-search",
    placeholder: "Filter images…",
    "aria-label": "Filter images",
    "data-testid": "images-filter",
    oninput: () => {
      needle = search.value.trim().toLowerCase();
      draw();
    },
  });

  replace(
    el,
    pageHeader(
      "Images",
      ownerFilter
        ? [
            "Images owned by ",
            h("strong", null, ownerFilter),
            " · ",
            h("a", { href: "#/images" }, "show all"),
          ]
        : "Container images built from git repositories with repo2docker.",
      search,
      refreshButton("refresh-images", () => void load()),
      canBuild ? newBuildButton() : null,
    ),
    notices,
    warnings,
    body,
  );

  async function remove(img: Image, version?: ImageVersion): Promise<void> {
    const who = `${img.owner}/${img.display_name || img.name}`;
    const count = img.versions.length;
    const ok = await confirmDialog({
      title: version ? "Delete this version?" : "Delete this image?",
      confirmLabel: version ? "Delete version" : "Delete image",
      body: version
        ? h(
            "p",
            { class: "mb-0" },
            "Version ",
            h("code", null, shortSha(version.tag)),
            version.ref ? ` (${version.ref})` : "",
            " of ",
            h("strong", null, who),
            " will be deleted from the build host",
            version.pushed ? " and from the registry" : "",
            ". This cannot be undone.",
          )
        : h(
            "p",
            { class: "mb-0" },
            count > 1 ? `All ${count} versions of ` : "",
            h("strong", null, who),
            " will be deleted from the build host",
            img.pushed || img.versions.some((v) => v.pushed) ? " and from the registry" : "",
            ". This cannot be undone.",
          ),
    });
    if (!ok || !scope.alive) return;
    try {
      const { data } = await ctx.api.delete<DeleteResult>(
        `images/${encodeURIComponent(img.owner)}/${encodeURIComponent(img.name)}`,
        { tag: version?.tag },
      );
      const deleted = data.deleted ?? [];
      const errors = describeErrors(data.errors ?? []);
      if (deleted.length) {
        flash(
          notices,
          "success",
          "delete-result",
          `Deleted ${deleted.length === 1 ? "1 image reference" : `${deleted.length} image references`}: `,
          h("span", { class: "font-monospace small" }, deleted.join(", ")),
        );
      }
      if (errors.length) {
        flash(
          notices,
          "warning",
          "delete-errors",
          "Some parts could not be deleted: ",
          errors.join("; "),
        );
      }
    } catch (err) {
      flash(notices, "danger", "delete-error", errorMessage(err));
    }
    await load();
  }

  function versionsTable(img: Image): HTMLElement {
    if (!img.versions.length) {
      return h(
        "p",
        { class: "text-body-secondary small mb-0" },
        "No versions are left of this image.",
      );
    }
    return h(
      "table",
      {
        class: "table table-sm align-middle mb-0 r2d-versions-table",
        "data-testid": "image-versions",
      },
      h(
        "thead",
        null,
        h(
          "tr",
          null,
          ...["Tag", "Ref", "Commit", "Created", "Size", "Where", "Build"].map((t) =>
            h("th", { scope: "col" }, t),
          ),
          h(
            "th",
            { scope: "col", class: "text-end" },
            h("span", { class: "visually-hidden" }, "Actions"),
          ),
        ),
      ),
      h(
        "tbody",
        null,
        ...img.versions.map((v) =>
          h(
            "tr",
            { "data-testid": "version-row", "data-tag": v.tag },
            h(
              "td",
              null,
              h(
                "code",
                { class: "r2d-sha", "data-bs-toggle": "tooltip", "data-bs-title": v.image },
                v.tag.length > 16 ? shortSha(v.tag) : v.tag,
              ),
              v.options_digest
                ? h(
                    "span",
                    {
                      class: "badge text-bg-secondary ms-1",
                      "data-testid": "version-options",
                      "data-bs-toggle": "tooltip",
                      "data-bs-title": JSON.stringify(v.options),
                    },
                    "options",
                  )
                : null,
              v.annotations && Object.keys(v.annotations).length
                ? h(
                    "span",
                    {
                      class: "badge text-bg-light border ms-1",
                      "data-testid": "version-annotations",
                      "data-bs-toggle": "tooltip",
                      "data-bs-title": Object.entries(v.annotations)
                        .map(([k, val]) => `${k}: ${val}`)
                        .join("\n"),
                    },
                    "annotations",
                  )
                : null,
            ),
            h("td", null, v.ref ?? "—"),
            h("td", null, shaEl(v.sha)),
            h("td", null, timeEl(v.created)),
            h("td", { class: "text-nowrap" }, humanSize(v.size)),
            h("td", null, locationBadges(v)),
            h(
              "td",
              null,
              v.build_id
                ? h(
                    "a",
                    {
                      href: hashFor(["builds", v.build_id]),
                      class: "small",
                      "data-testid": "version-log",
                    },
                    icon("terminal", "me-1"),
                    "log",
                  )
                : h("span", { class: "text-body-secondary" }, "—"),
            ),
            h(
              "td",
              { class: "text-end" },
              img.can_delete
                ? h(
                    "button",
                    {
                      type: "button",
                      class: "btn btn-sm btn-outline-danger",
                      "data-testid": "delete-version",
                      "aria-label": `Delete version ${v.tag} of ${keyOf(img)}`,
                      onclick: () => void remove(img, v),
                    },
                    icon("trash"),
                  )
                : null,
            ),
          ),
        ),
      ),
    );
  }

  function imageRows(img: Image, index: number): HTMLElement[] {
    const key = keyOf(img);
    const open = expanded.has(key);
    const versionsId = `r2d-versions-${index}`;
    const versionsRow = h(
      "tr",
      {
        class: "r2d-versions-row",
        id: versionsId,
        hidden: !open,
        "data-testid": "image-versions-row",
      },
      h("td", { colspan: "9", class: "bg-body-tertiary px-4 py-3" }, versionsTable(img)),
    );
    const toggle = h(
      "button",
      {
        type: "button",
        class: "btn btn-sm btn-link text-body-secondary r2d-toggle",
        "aria-expanded": String(open),
        "aria-controls": versionsId,
        "aria-label": `Show the versions of ${key}`,
        "data-testid": "toggle-versions",
        onclick: () => {
          const nowOpen = !expanded.has(key);
          if (nowOpen) expanded.add(key);
          else expanded.delete(key);
          toggle.setAttribute("aria-expanded", String(nowOpen));
          versionsRow.hidden = !nowOpen;
        },
      },
      icon("chevron"),
    );
    const launch = launchHref(ctx.config.launch_url, img.image, img.name, ctx.config.user);
    const rebuildHref = hashFor(["new"], {
      repo: img.repo,
      ref: img.ref,
      name: img.display_name || img.name,
      owner: img.owner,
    });
    const row = h(
      "tr",
      {
        "data-testid": "image-row",
        "data-owner": img.owner,
        "data-name": img.name,
        class: key === focus ? "r2d-focus" : null,
        // a click anywhere but on a control opens the versions, as a convenience for mice
        onclick: (e: Event) => {
          if (!(e.target as HTMLElement).closest("a, button, input")) toggle.click();
        },
      },
      h("td", { class: "r2d-col-toggle" }, toggle),
      h("td", null, img.owner),
      h(
        "td",
        null,
        h("div", { class: "fw-semibold text-nowrap" }, img.display_name || img.name),
        h(
          "div",
          { class: "small text-body-secondary" },
          img.versions.length === 1 ? "1 version" : `${img.versions.length} versions`,
        ),
      ),
      h("td", { class: "r2d-source" }, sourceEl(img.repo, img.ref)),
      h("td", null, shaEl(img.sha)),
      h("td", { class: "text-nowrap" }, timeEl(img.created)),
      h("td", { class: "text-nowrap" }, humanSize(img.size)),
      h("td", null, locationBadges(img, true)),
      h(
        "td",
        { class: "text-end text-nowrap" },
        h(
          "div",
          { class: "d-inline-flex gap-1" },
          launch
            ? h(
                "a",
                {
                  class: "btn btn-sm btn-primary",
                  href: launch,
                  "data-testid": "launch-image",
                  "aria-label": `Launch ${key}`,
                  title: `Start a server with ${img.image}`,
                },
                icon("launch", "me-1"),
                "Launch",
              )
            : null,
          img.can_build && img.repo
            ? h(
                "a",
                {
                  class: "btn btn-sm btn-outline-primary",
                  href: rebuildHref,
                  "data-testid": "rebuild-image",
                  "aria-label": `Rebuild ${key}`,
                },
                icon("rebuild", "me-1"),
                "Rebuild",
              )
            : null,
          img.can_delete
            ? h(
                "button",
                {
                  type: "button",
                  class: "btn btn-sm btn-outline-danger",
                  "data-testid": "delete-image",
                  "aria-label": `Delete ${key}`,
                  onclick: () => void remove(img),
                },
                icon("trash", "me-1"),
                "Delete",
              )
            : null,
        ),
      ),
    );
    return [row, versionsRow];
  }

  function draw(): void {
    disposeTooltips(body);
    if (!images.length) {
      replace(
        body,
        emptyState(
          "images-empty",
          "image",
          "No images yet",
          canBuild
            ? "Build one from a git repository: it appears here when it is done."
            : "Images built for you will appear here.",
          canBuild ? newBuildButton(false, "empty-new-build") : null,
        ),
      );
      return;
    }
    const shown = images.filter(
      (img) =>
        !needle ||
        [img.owner, img.name, img.display_name, img.repo ?? "", img.ref ?? ""].some((s) =>
          s.toLowerCase().includes(needle),
        ),
    );
    const rows: Child[] = shown.flatMap((img, i) => imageRows(img, i));
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
              "data-testid": "images-table",
            },
            h(
              "thead",
              null,
              h(
                "tr",
                null,
                h(
                  "th",
                  { scope: "col", class: "r2d-col-toggle" },
                  h("span", { class: "visually-hidden" }, "Versions"),
                ),
                ...["Owner", "Name", "Repository", "Commit", "Created", "Size", "Where"].map((t) =>
                  h("th", { scope: "col" }, t),
                ),
                h(
                  "th",
                  { scope: "col", class: "text-end" },
                  h("span", { class: "visually-hidden" }, "Actions"),
                ),
              ),
            ),
            h("tbody", null, ...rows),
          ),
        ),
        shown.length
          ? null
          : h(
              "p",
              { class: "text-body-secondary text-center my-3" },
              "No image matches the filter.",
            ),
      ),
    );
    if (focus) body.querySelector(".r2d-focus")?.scrollIntoView({ block: "center" });
  }

  async function load(): Promise<void> {
    let answer: ImagesAnswer;
    try {
      answer = (await ctx.api.get<ImagesAnswer>("images", { owner: ownerFilter })).data;
    } catch (err) {
      if (scope.alive) replace(body, errorAlert(err));
      return;
    }
    if (!scope.alive) return;
    images = answer.images ?? [];
    replace(
      warnings,
      ...(answer.warnings ?? []).map((w) =>
        h(
          "div",
          { class: "alert alert-warning py-2", role: "status", "data-testid": "images-warning" },
          icon("warning", "me-2"),
          w,
        ),
      ),
    );
    draw();
  }

  await load();
};
