// Bootstrap's JavaScript, only the components this UI uses (each pulls its own helpers), so the
// bundle stays small. Importing Collapse also enables its data-bs-toggle="collapse" API (navbar).

export { default as Collapse } from "bootstrap/js/dist/collapse";
export { default as Modal } from "bootstrap/js/dist/modal";
export { default as Tooltip } from "bootstrap/js/dist/tooltip";
