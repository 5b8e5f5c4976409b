// #/new: the build form. Checks input with the API's own rules first, then shows the server's
// answer: a 202 goes to the build's log, a 200 "skipped" points at the existing image, a 400
// lands on the field it names.

import { ApiError, errorMessage } from "../api";
import { Collapse } from "../bootstrap";
import type { View } from "../context";
import { type Child, alertBox, h, replace } from "../dom";
import { icon } from "../icons";
import { may, ownerField } from "../perms";
import type { Build, BuildOptionsInfo, SkippedBuild } from "../types";
import { imageReference, noPermission, pageHeader } from "../ui";
import { defaultNameForRepo, hashFor } from "../util";
import { checkName, checkOwner, checkRef, checkRepo, compileRules } from "../validate";

type Control = HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement;

interface Field {
  wrap: HTMLElement;
  control: Control;
  setError(message: string | null): void;
}

let uid = 0;

function field(
  name: string,
  label: string,
  control: Control,
  help: Child = null,
  wrapClass = "mb-3",
): Field {
  uid += 1;
  const id = `r2d-${name}-${uid}`;
  control.id = id;
  control.name = name;
  control.classList.add(control instanceof HTMLSelectElement ? "form-select" : "form-control");
  control.setAttribute("data-testid", `field-${name}`);
  const helpEl = help ? h("div", { class: "form-text", id: `${id}-help` }, help) : null;
  const feedback = h("div", {
    class: "invalid-feedback",
    id: `${id}-error`,
    "data-testid": `error-${name}`,
  });
  control.setAttribute(
    "aria-describedby",
    [helpEl ? `${id}-help` : "", `${id}-error`].join(" ").trim(),
  );
  const wrap = h(
    "div",
    { class: wrapClass },
    h("label", { class: "form-label fw-semibold", for: id }, label),
    control,
    feedback,
    helpEl,
  );
  return {
    wrap,
    control,
    setError(message) {
      control.classList.toggle("is-invalid", !!message);
      if (message) control.setAttribute("aria-invalid", "true");
      else control.removeAttribute("aria-invalid");
      feedback.textContent = message ?? "";
    },
  };
}

function checkbox(name: string, checked: boolean, switchStyle = false): HTMLInputElement {
  uid += 1;
  return h("input", {
    class: "form-check-input",
    type: "checkbox",
    id: `r2d-${name}-${uid}`,
    name,
    checked,
    role: switchStyle ? "switch" : null,
    "data-testid": `field-${name}`,
  });
}

export const newBuildView: View = (ctx, route, el, scope) => {
  document.title = "Build an image · repo2docker";
  if (!may(ctx.info, "build")) {
    replace(el, noPermission(ctx.info, "build", "build images here"));
    return;
  }
  const rules = compileRules(ctx.info);
  const owners = ownerField(ctx.info);
  const q = route.query;
  const me = ctx.info.user?.name ?? ctx.config.user ?? "";

  // --- fields
  const repo = field(
    "repo",
    "Repository URL",
    h("input", {
      type: "url",
      placeholder: "https://github.com/org/repo",
      autocomplete: "url",
      spellcheck: "false",
      required: true,
      value: q.get("repo") ?? "",
    }),
    rules.repoPatterns.length
      ? [
          "A git repository. Allowed here: ",
          ...rules.repoPatterns.flatMap((p, i) => [i ? ", " : "", h("code", null, p)]),
        ]
      : "A git repository.",
  );
  const ref = field(
    "ref",
    "Ref",
    h("input", {
      type: "text",
      value: q.get("ref") || "HEAD",
      spellcheck: "false",
      required: true,
    }),
    ["Branch, tag or commit. ", h("code", null, "HEAD"), " is the default branch."],
    "mb-3 col-md-5",
  );
  const name = field(
    "name",
    "Image name",
    h("input", {
      type: "text",
      value: q.get("name") ?? "",
      spellcheck: "false",
      required: true,
      placeholder: "from the repository URL",
    }),
    "Letters, digits, '.', '_' and '-'.",
    "mb-3 col-md-7",
  );
  let owner: Field | null = null;
  if (owners.show) {
    let control: Control;
    const wanted = q.get("owner");
    // Group grants cover the images of the group's members: say so, since only user names work.
    const groupHelp: Child = owners.groups.length
      ? [
          owners.groups.length === 1 ? " Your grant for group " : " Your grants for groups ",
          ...owners.groups.flatMap((g, i) => [i ? ", " : "", h("code", null, g)]),
          owners.groups.length === 1 ? " covers its members: " : " cover their members: ",
          "type a member's user name.",
        ]
      : null;
    if (owners.free) {
      const listId = `r2d-owner-list-${++uid}`;
      control = h("input", {
        type: "text",
        list: listId,
        value: wanted || owners.initial,
        spellcheck: "false",
        autocomplete: "off",
        placeholder: "a Hub user name",
      });
      owner = field("owner", "Owner", control, ["The Hub user the image belongs to.", groupHelp]);
      owner.wrap.appendChild(
        h(
          "datalist",
          { id: listId },
          ...owners.choices.map((c) => h("option", { value: c.value }, c.label)),
        ),
      );
    } else {
      control = h(
        "select",
        null,
        ...owners.choices.map((c) => h("option", { value: c.value }, c.label)),
      );
      (control as HTMLSelectElement).value =
        wanted && owners.choices.some((c) => c.value === wanted) ? wanted : owners.initial;
      owner = field("owner", "Owner", control, "The Hub user the image belongs to.");
    }
  }
  const username = field(
    "username",
    "Username",
    h("input", { type: "text", autocomplete: "off", spellcheck: "false" }),
    null,
    "mb-3 col-md-6",
  );
  const password = field(
    "password",
    "Password or token",
    h("input", { type: "password", autocomplete: "new-password" }),
    null,
    "mb-3 col-md-6",
  );
  const push = ctx.info.registry?.configured ? checkbox("push", false, true) : null;
  const force = checkbox("force", q.get("force") === "1");
  const fields: Record<string, Field> = { repo, ref, name, username, password };
  if (owner) fields.owner = owner;
  const advanced = advancedFields(ctx.info.options);
  for (const [option, f] of Object.entries(advanced.fields)) fields[`options.${option}`] = f;

  // The name follows the URL until the user types a name of their own.
  let nameTouched = !!q.get("name");
  repo.control.addEventListener("input", () => {
    if (!nameTouched)
      name.control.value = repo.control.value.trim() ? defaultNameForRepo(repo.control.value) : "";
  });
  name.control.addEventListener("input", () => {
    nameTouched = name.control.value !== "";
  });
  if (!nameTouched && repo.control.value)
    name.control.value = defaultNameForRepo(repo.control.value);

  // --- validation
  let attempted = false;
  const checks: [Field, () => string | null][] = [
    [repo, () => checkRepo(repo.control.value.trim(), rules)],
    [ref, () => checkRef(ref.control.value.trim(), rules)],
    [name, () => checkName(name.control.value.trim(), rules)],
  ];
  if (owner) {
    const o = owner;
    checks.push([o, () => checkOwner(o.control.value.trim())]);
  }
  checks.push([
    password,
    () =>
      password.control.value && !username.control.value.trim()
        ? "Give the username that goes with this password (for a token, often any non-empty name)."
        : null,
  ]);
  const validate = (): boolean => {
    let ok = true;
    for (const [f, check] of checks) {
      const message = check();
      f.setError(message);
      if (message && ok) {
        ok = false;
        f.control.focus();
      }
    }
    return ok;
  };
  for (const [f, check] of checks) {
    f.control.addEventListener("input", () => {
      if (attempted) f.setError(check());
    });
  }

  // --- layout
  const result = h("div", { "data-testid": "build-result", "aria-live": "polite" });
  const submitLabel = h("span", null, "Build");
  const submitSpinner = h("span", {
    class: "spinner-border spinner-border-sm me-2",
    hidden: true,
    "aria-hidden": "true",
  });
  const submit = h(
    "button",
    { type: "submit", class: "btn btn-jupyter px-4", "data-testid": "build-submit" },
    submitSpinner,
    icon("build", "me-1"),
    submitLabel,
  );
  const credentialsId = `r2d-credentials-${++uid}`;
  const advancedId = `r2d-advanced-${++uid}`;
  const form = h(
    "form",
    {
      class: "card shadow-sm border-0",
      novalidate: true,
      "data-testid": "build-form",
      "aria-label": "Build an image",
    },
    h(
      "div",
      { class: "card-body p-4" },
      repo.wrap,
      h("div", { class: "row g-3" }, name.wrap, ref.wrap),
      owner ? owner.wrap : null,
      h(
        "div",
        { class: "mb-3" },
        h(
          "button",
          {
            type: "button",
            class: "btn btn-link px-0 text-decoration-none",
            "data-bs-toggle": "collapse",
            "data-bs-target": `#${credentialsId}`,
            "aria-expanded": "false",
            "aria-controls": credentialsId,
            "data-testid": "toggle-credentials",
          },
          icon("key", "me-1"),
          "Private repository? Add credentials",
        ),
        h(
          "div",
          { class: "collapse", id: credentialsId, "data-testid": "credentials" },
          h(
            "div",
            { class: "border rounded p-3 mt-2 bg-body-tertiary" },
            h("div", { class: "row g-3" }, username.wrap, password.wrap),
            h(
              "p",
              { class: "form-text mb-0" },
              "Used to fetch this repository. For GitHub or GitLab, use a personal access token with read access as the password.",
            ),
          ),
        ),
      ),
      advanced.section(advancedId),
      push
        ? h(
            "div",
            { class: "form-check form-switch mb-2" },
            push,
            h(
              "label",
              { class: "form-check-label", for: push.id },
              "Push the image to the registry",
              ctx.info.registry.url
                ? h(
                    "span",
                    { class: "text-body-secondary small ms-1" },
                    `(${ctx.info.registry.url})`,
                  )
                : null,
            ),
          )
        : null,
      h(
        "div",
        { class: "form-check mb-4" },
        force,
        h(
          "label",
          { class: "form-check-label", for: force.id },
          "Build again even if an image for this commit already exists",
        ),
      ),
      h(
        "div",
        { class: "d-flex gap-2 align-items-center" },
        submit,
        h(
          "a",
          {
            class: "btn btn-outline-secondary",
            href: may(ctx.info, "read") ? "#/images" : ctx.config.hub_url,
          },
          "Cancel",
        ),
      ),
    ),
  );

  const limits = ctx.info.limits ?? {};
  replace(
    el,
    pageHeader("Build an image", "repo2docker turns a git repository into a container image."),
    h(
      "div",
      { class: "row g-4" },
      h("div", { class: "col-lg-8" }, result, form),
      h(
        "div",
        { class: "col-lg-4" },
        h(
          "div",
          { class: "card border-0 bg-body-tertiary" },
          h(
            "div",
            { class: "card-body small" },
            h("h2", { class: "h6" }, "How it works"),
            h(
              "p",
              null,
              "repo2docker reads the configuration files in the repository, such as ",
              h("code", null, "requirements.txt"),
              ", ",
              h("code", null, "environment.yml"),
              " or a ",
              h("code", null, "Dockerfile"),
              ", and builds an image with everything installed.",
            ),
            h(
              "p",
              null,
              "The ref is resolved to a commit first: a commit that was built before is not built again, unless you ask for it.",
            ),
            limits.max_concurrent_builds || limits.max_builds_per_owner
              ? h(
                  "p",
                  { class: "mb-0 text-body-secondary" },
                  limits.max_concurrent_builds
                    ? `Up to ${limits.max_concurrent_builds} builds run at once`
                    : "",
                  limits.max_concurrent_builds && limits.max_builds_per_owner ? "; " : "",
                  limits.max_builds_per_owner
                    ? `${limits.max_builds_per_owner} per owner at a time`
                    : "",
                  ". Others wait in the queue.",
                )
              : null,
          ),
        ),
      ),
    ),
  );

  const busy = (on: boolean) => {
    submit.disabled = on;
    submitSpinner.hidden = !on;
    submitLabel.textContent = on ? "Starting…" : "Build";
  };

  function showSkipped(answer: SkippedBuild): void {
    const img = answer.image;
    replace(
      result,
      h(
        "div",
        { class: "alert alert-info", role: "status", "data-testid": "build-skipped" },
        h("h2", { class: "alert-heading h6" }, icon("success", "me-2"), "Nothing to build"),
        h(
          "p",
          { class: "mb-2" },
          answer.reason
            ? `${answer.reason[0].toUpperCase()}${answer.reason.slice(1)}.`
            : "This image exists already.",
        ),
        img?.image ? h("div", { class: "mb-2" }, imageReference(img.image)) : null,
        h(
          "p",
          { class: "mb-0" },
          img
            ? h(
                "a",
                {
                  class: "alert-link",
                  href: hashFor(["images"], { image: `${img.owner}/${img.name}` }),
                  "data-testid": "skipped-image-link",
                },
                `Show ${img.owner}/${img.display_name || img.name}`,
              )
            : null,
          " · Tick “Build again” to rebuild it anyway.",
        ),
      ),
    );
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    attempted = true;
    replace(result);
    if (!validate()) return;
    const body: Record<string, unknown> = {
      repo: repo.control.value.trim(),
      ref: ref.control.value.trim(),
      name: name.control.value.trim(),
    };
    const chosenOwner = owner ? owner.control.value.trim() : owners.initial;
    // Without the field the server builds for the caller; send an owner only when it differs.
    if (chosenOwner && chosenOwner !== me) body.owner = chosenOwner;
    if (push) body.push = push.checked;
    if (force.checked) body.force = true;
    let options: Record<string, unknown> | null;
    try {
      options = advanced.values();
    } catch (err) {
      const [option, message] = err as [string, string];
      const f = advanced.fields[option];
      f.setError(message);
      advanced.open(form, advancedId);
      f.control.focus();
      return;
    }
    if (options) body.options = options;
    if (username.control.value.trim() || password.control.value) {
      body.credentials = {
        username: username.control.value.trim(),
        password: password.control.value,
      };
    }
    busy(true);
    try {
      const answer = await ctx.api.post<Build | SkippedBuild>("builds", body);
      if (!scope.alive) return;
      if ("skipped" in answer.data && answer.data.skipped) {
        showSkipped(answer.data);
      } else {
        const build = answer.data as Build;
        window.location.hash = hashFor(["builds", build.id], { joined: build.joined ? "1" : null });
      }
    } catch (err) {
      if (!scope.alive) return;
      const target =
        err instanceof ApiError && err.status === 400 && err.field
          ? fields[err.field === "credentials" ? "username" : err.field]
          : undefined;
      if (target) {
        target.setError(errorMessage(err));
        if (err instanceof ApiError && err.field?.startsWith("options."))
          advanced.open(form, advancedId);
        if (err instanceof ApiError && err.field === "credentials") {
          const panel = form.querySelector<HTMLElement>(`#${credentialsId}`);
          if (panel) Collapse.getOrCreateInstance(panel, { toggle: false }).show();
        }
        target.control.focus();
      } else {
        replace(
          result,
          alertBox("danger", "build-error", icon("warning", "me-2"), errorMessage(err)),
        );
      }
    } finally {
      if (scope.alive) busy(false);
    }
  });

  (repo.control.value ? submit : repo.control).focus();
};

const OPTION_LABELS: Record<string, [string, string]> = {
  subdir: ["Subfolder", "Build this folder of the repository (repo2docker --subdir)."],
  target_repo_dir: [
    "Repository folder in the image",
    "Where the repository's files go (repo2docker --target-repo-dir), e.g. outside a home volume.",
  ],
  user_id: ["User id", "uid of the image's user (repo2docker --user-id)."],
  user_name: ["User name", "Name of the image's user (repo2docker --user-name)."],
  platform: ["Platform", "The platform to build for."],
  build_args: ["Build arguments", "One NAME=VALUE per line (repo2docker --build-arg)."],
  appendix: [
    "Dockerfile appendix",
    "Dockerfile commands run at the end of the build (repo2docker --appendix).",
  ],
};

interface Advanced {
  fields: Record<string, Field>;
  section(id: string): HTMLElement | null;
  /** the options to send (null: none), or throws [option, message] */
  values(): Record<string, unknown> | null;
  open(form: HTMLElement, id: string): void;
}

/** The "Advanced" section: only the options the admin allows this caller (GET api/ options). */
function advancedFields(info: BuildOptionsInfo | undefined): Advanced {
  const allowed = info?.allowed ?? [];
  const defaults = info?.defaults ?? {};
  const fields: Record<string, Field> = {};
  for (const option of allowed) {
    const [label, help] = OPTION_LABELS[option] ?? [option, ""];
    const fallback = defaults[option];
    let control: Control;
    if (option === "platform") {
      control = h(
        "select",
        null,
        h("option", { value: "" }, fallback ? `default (${String(fallback)})` : "default"),
        ...(info?.platforms ?? []).map((p) => h("option", { value: p }, p)),
      );
    } else if (option === "build_args" || option === "appendix") {
      control = h("textarea", {
        rows: option === "appendix" ? 4 : 3,
        spellcheck: "false",
        class: "font-monospace",
        placeholder: option === "build_args" ? "NAME=value" : "RUN echo hello",
      });
    } else if (option === "user_id") {
      const [low, high] = info?.user_id_range ?? [1000, 65535];
      control = h("input", {
        type: "number",
        min: String(low),
        max: String(high),
        placeholder: fallback !== undefined ? String(fallback) : `${low}–${high}`,
      });
    } else {
      control = h("input", {
        type: "text",
        spellcheck: "false",
        placeholder:
          fallback !== undefined
            ? String(fallback)
            : option === "target_repo_dir"
              ? `under ${(info?.target_repo_dir_prefixes ?? []).join(", ")}`
              : "",
      });
    }
    fields[option] = field(`options.${option}`, label, control, help);
  }
  return {
    fields,
    section(id) {
      if (!allowed.length) return null;
      return h(
        "div",
        { class: "mb-3", "data-testid": "advanced" },
        h(
          "button",
          {
            type: "button",
            class: "btn btn-link px-0 text-decoration-none",
            "data-bs-toggle": "collapse",
            "data-bs-target": `#${id}`,
            "aria-expanded": "false",
            "aria-controls": id,
            "data-testid": "toggle-advanced",
          },
          icon("build", "me-1"),
          "Advanced: repo2docker options",
        ),
        h(
          "div",
          { class: "collapse", id },
          h(
            "div",
            { class: "border rounded p-3 mt-2 bg-body-tertiary" },
            ...Object.values(fields).map((f) => f.wrap),
            h(
              "p",
              { class: "form-text mb-0" },
              "Empty fields use the service's defaults. Different options make a different image of the same commit.",
            ),
          ),
        ),
      );
    },
    values() {
      const options: Record<string, unknown> = {};
      for (const [option, f] of Object.entries(fields)) {
        f.setError(null);
        const raw = f.control.value;
        if (!raw.trim()) continue;
        if (option === "user_id") {
          const n = Number(raw);
          if (!Number.isInteger(n)) throw [option, "Give a whole number."];
          options[option] = n;
        } else if (option === "build_args") {
          const args: Record<string, string> = {};
          for (const line of raw.split("\n")) {
            if (!line.trim()) continue;
            const at = line.indexOf("=");
            if (at < 1) throw [option, `“${line}” is not NAME=VALUE.`];
            args[line.slice(0, at).trim()] = line.slice(at + 1);
          }
          options[option] = args;
        } else if (option === "appendix") {
          options[option] = raw;
        } else {
          options[option] = raw.trim();
        }
      }
      return Object.keys(options).length ? options : null;
    },
    open(form, id) {
      const panel = form.querySelector<HTMLElement>(`#${id}`);
      if (panel) Collapse.getOrCreateInstance(panel, { toggle: false }).show();
    },
  };
}
