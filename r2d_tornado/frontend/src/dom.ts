// A tiny element builder. Every piece of API data goes into the page as text nodes or attribute
// values, never as HTML, so names, refs and log lines cannot inject markup.

export type Child = Node | string | number | null | undefined | false | Child[];
type AttrValue = string | number | boolean | null | undefined | EventListener;
export type Attrs = Record<string, AttrValue>;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs?: Attrs | null,
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (typeof value === "function") {
      el.addEventListener(key.replace(/^on/, ""), value);
    } else if (key === "class") {
      el.className = String(value);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(parent: Node, children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(parent, child);
    else parent.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** replace all of ``el``'s content */
export function replace(el: Element, ...children: Child[]): void {
  el.replaceChildren();
  append(el, children);
}

/** an inline SVG icon from a trusted, bundled SVG string (bootstrap-icons) */
export function svgIcon(svg: string, extraClass = ""): HTMLSpanElement {
  const span = document.createElement("span");
  span.className = `r2d-icon ${extraClass}`.trim();
  span.setAttribute("aria-hidden", "true");
  span.innerHTML = svg;
  return span;
}

export function spinner(label = "Loading…"): HTMLElement {
  return h(
    "div",
    { class: "d-flex align-items-center gap-2 text-body-secondary py-4", role: "status" },
    h("span", { class: "spinner-border spinner-border-sm", "aria-hidden": "true" }),
    h("span", null, label),
  );
}

export type AlertKind =
  "primary" | "secondary" | "success" | "danger" | "warning" | "info" | "dark";

export function alertBox(
  kind: AlertKind,
  testid: string | null,
  ...children: Child[]
): HTMLElement {
  return h(
    "div",
    {
      class: `alert alert-${kind}`,
      role: kind === "danger" ? "alert" : "status",
      "data-testid": testid,
    },
    ...children,
  );
}
