// The few bootstrap-icons the UI shows, bundled as SVG text (no icon font to download).

import arrowClockwise from "bootstrap-icons/icons/arrow-clockwise.svg";
import arrowRepeat from "bootstrap-icons/icons/arrow-repeat.svg";
import boxSeam from "bootstrap-icons/icons/box-seam.svg";
import check2 from "bootstrap-icons/icons/check2.svg";
import checkCircleFill from "bootstrap-icons/icons/check-circle-fill.svg";
import chevronRight from "bootstrap-icons/icons/chevron-right.svg";
import clipboard from "bootstrap-icons/icons/clipboard.svg";
import cloudCheck from "bootstrap-icons/icons/cloud-check.svg";
import download from "bootstrap-icons/icons/download.svg";
import exclamationTriangleFill from "bootstrap-icons/icons/exclamation-triangle-fill.svg";
import git from "bootstrap-icons/icons/git.svg";
import hammer from "bootstrap-icons/icons/hammer.svg";
import hdd from "bootstrap-icons/icons/hdd.svg";
import key from "bootstrap-icons/icons/key.svg";
import lock from "bootstrap-icons/icons/lock.svg";
import playFill from "bootstrap-icons/icons/play-fill.svg";
import plusLg from "bootstrap-icons/icons/plus-lg.svg";
import slashCircle from "bootstrap-icons/icons/slash-circle.svg";
import stopCircle from "bootstrap-icons/icons/stop-circle.svg";
import terminal from "bootstrap-icons/icons/terminal.svg";
import trash from "bootstrap-icons/icons/trash.svg";
import xCircleFill from "bootstrap-icons/icons/x-circle-fill.svg";

import { svgIcon } from "./dom";

const ICONS = {
  refresh: arrowClockwise,
  rebuild: arrowRepeat,
  launch: playFill,
  image: boxSeam,
  check: check2,
  success: checkCircleFill,
  chevron: chevronRight,
  copy: clipboard,
  pushed: cloudCheck,
  download,
  warning: exclamationTriangleFill,
  git,
  build: hammer,
  local: hdd,
  key,
  lock,
  plus: plusLg,
  cancelled: slashCircle,
  cancel: stopCircle,
  terminal,
  trash,
  failed: xCircleFill,
} as const;

export type IconName = keyof typeof ICONS;

export function icon(name: IconName, extraClass = ""): HTMLSpanElement {
  return svgIcon(ICONS[name], extraClass);
}
