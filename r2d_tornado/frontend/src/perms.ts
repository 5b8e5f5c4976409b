// What the caller may do, from GET api/ → permissions (the server enforces it; the UI only hides
// what would be refused and explains which scope is missing).

import type { Action, Permission, ServiceInfo } from "./types";

const NONE: Permission = { all: false, owners: [], groups: [] };

export function permission(info: ServiceInfo, action: Action): Permission {
  const p = info.permissions?.[action];
  return {
    all: !!p?.all,
    owners: Array.isArray(p?.owners) ? p.owners : NONE.owners,
    groups: Array.isArray(p?.groups) ? p.groups : NONE.groups,
  };
}

export function may(info: ServiceInfo, action: Action): boolean {
  const p = permission(info, action);
  return p.all || p.owners.length > 0 || p.groups.length > 0;
}

export interface OwnerChoice {
  value: string;
  label: string;
}

export interface OwnerField {
  /** show an owner field at all: the caller may build for more than one owner */
  show: boolean;
  /** any user name may be typed (an unfiltered build scope, or a group grant) */
  free: boolean;
  /** Hub *user* names to offer: the caller (when allowed) and the users of the build grant */
  choices: OwnerChoice[];
  /** the owner to preselect: the caller when allowed, else the only user granted, else "" */
  initial: string;
  /** groups whose members' images the caller may build (named in the help text) */
  groups: string[];
}

/**
 * The build form's owner field. An owner is always a Hub user name (the API's `owner`): a grant
 * for group `team` means "the images of team's members", so groups are never offered as owners.
 * The UI cannot list a group's members (the server resolves them), hence free text then.
 */
export function ownerField(info: ServiceInfo): OwnerField {
  const p = permission(info, "build");
  const me = info.user?.name ?? "";
  const choices: OwnerChoice[] = [];
  const seen = new Set<string>();
  const add = (value: string, label: string) => {
    if (!value || seen.has(value)) return;
    seen.add(value);
    choices.push({ value, label });
  };
  if (me && (p.all || p.owners.includes(me))) add(me, `${me} (you)`);
  for (const owner of p.owners) add(owner, owner);
  const free = p.all || p.groups.length > 0;
  const show = free || choices.length > 1;
  const initial = choices[0]?.value ?? "";
  return { show, free, choices, initial, groups: [...p.groups] };
}
