// Validates ServiceMonitor objects against the schema generated from the
// Prometheus Operator's CRD (@kubernetes-models/prometheus-operator).
// Input: a JSON array of objects on stdin. Output: one line per object;
// exit status 1 if any is invalid.
"use strict";
const { ServiceMonitor } = require("@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1");

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  const objects = JSON.parse(input);
  let bad = 0;
  for (const { label, object } of objects) {
    try {
      new ServiceMonitor(object).validate();
      console.log(`ok    ${label}`);
    } catch (e) {
      bad += 1;
      console.log(`ERROR ${label}: ${e.message}`);
    }
  }
  process.exit(bad ? 1 : 0);
});
