// Reads a JSON array of LogQL queries on stdin; prints a JSON array of
// {query, ok, error} with the position and text of the first syntax error.
// An error node (Lezer's error type) anywhere in the tree is a syntax error,
// as in Grafana's Loki query validation.
import { parser } from '@grafana/lezer-logql';

let input = '';
for await (const chunk of process.stdin) input += chunk;
const results = JSON.parse(input).map((query) => {
  const tree = parser.parse(query);
  let error = null;
  tree.iterate({
    enter: (node) => {
      if (error === null && node.type.isError) {
        error = { from: node.from, to: node.to, near: query.slice(Math.max(0, node.from - 10), node.to + 10) };
      }
    },
  });
  // The whole query must be one expression (a parse that stops early leaves the rest out).
  const top = tree.topNode.firstChild;
  if (error === null && (top === null || top.to !== query.trimEnd().length)) {
    error = { from: top ? top.to : 0, to: query.length, near: query.slice(top ? top.to : 0) };
  }
  return { query, ok: error === null, error, tree: tree.toString() };
});
process.stdout.write(JSON.stringify(results));
