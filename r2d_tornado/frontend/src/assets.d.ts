// esbuild's "text" loader turns these imports into strings.
declare module "*.svg" {
  const content: string;
  export default content;
}
