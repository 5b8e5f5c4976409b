// The UI's DOM-free logic with JSON-friendly signatures, for tests/test_ui_static.py (through
// test/eval.mjs): form validation, name defaults, formatting, phases and permissions.

import { ownerField } from "../src/perms";
import type { ServiceInfo } from "../src/types";
import { parseHash } from "../src/util";
import { checkName, checkOwner, checkRef, checkRepo, compileRules } from "../src/validate";

export { phaseLines, phaseSteps } from "../src/phases";
export { may } from "../src/perms";
export {
  defaultNameForRepo,
  duration,
  humanSize,
  launchHref,
  stripAnsi,
  terminalLine,
} from "../src/util";
export { ownerField };

/** the form's message for ``value`` in ``field`` under the rules of ``info`` (null: accepted) */
export function check(info: ServiceInfo, field: string, value: string): string | null {
  const rules = compileRules(info);
  switch (field) {
    case "repo":
      return checkRepo(value, rules);
    case "ref":
      return checkRef(value, rules);
    case "name":
      return checkName(value, rules);
    case "owner":
      return checkOwner(value);
    default:
      throw new Error(`no check for ${field}`);
  }
}

export function route(hash: string): { path: string[]; query: Record<string, string> } {
  const r = parseHash(hash);
  return { path: r.path, query: Object.fromEntries(r.query) };
}
