//! A small builder for Grafana dashboard JSON: panels flow left to right on the 24-column
//! grid, rows start a new line, ids are assigned in order.

use serde_json::{Value, json};

/// Grafana's schema version the JSON is written in (Grafana 10.x/11.x read it as is).
const SCHEMA_VERSION: u32 = 39;
const GRID_WIDTH: u32 = 24;

/// A panel whose query may rightly return nothing on a healthy stack (no alert firing, no
/// request refused yet) shows this text instead of "No data": Grafana's `noValue`.
pub const NO_VALUE_KEY: &str = "noValue";

pub(super) struct Board {
    uid: &'static str,
    title: &'static str,
    description: String,
    panels: Vec<Value>,
    vars: Vec<Value>,
    x: u32,
    y: u32,
    line_height: u32,
}

impl Board {
    pub fn new(uid: &'static str, title: &'static str, description: impl Into<String>) -> Board {
        Board {
            uid,
            title,
            description: description.into(),
            panels: Vec::new(),
            vars: Vec::new(),
            x: 0,
            y: 0,
            line_height: 0,
        }
    }

    pub fn var(&mut self, v: Value) {
        self.vars.push(v);
    }

    /// A row header on a line of its own.
    pub fn row(&mut self, title: &str) {
        self.newline();
        let id = self.panels.len() + 1;
        self.panels.push(json!({
            "id": id,
            "type": "row",
            "title": title,
            "collapsed": false,
            "panels": [],
            "gridPos": {"x": 0, "y": self.y, "w": GRID_WIDTH, "h": 1},
        }));
        self.y += 1;
    }

    pub fn add(&mut self, p: Panel) {
        if self.x + p.w > GRID_WIDTH {
            self.newline();
        }
        let id = self.panels.len() + 1;
        let mut v = p.json;
        v["id"] = json!(id);
        v["gridPos"] = json!({"x": self.x, "y": self.y, "w": p.w, "h": p.h});
        self.panels.push(v);
        self.x += p.w;
        self.line_height = self.line_height.max(p.h);
    }

    fn newline(&mut self) {
        if self.x > 0 {
            self.y += self.line_height;
        }
        self.x = 0;
        self.line_height = 0;
    }

    pub fn json(self) -> Value {
        json!({
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["atlas"],
            "editable": true,
            "graphTooltip": 1,
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "time": {"from": "now-6h", "to": "now"},
            "refresh": "1m",
            "timezone": "browser",
            "annotations": {"list": []},
            "links": [],
            "templating": {"list": self.vars},
            "panels": self.panels,
        })
    }
}

/// One panel before it is placed.
pub(super) struct Panel {
    json: Value,
    w: u32,
    h: u32,
}

/// A datasource reference (`{"type", "uid"}`), as panels and targets carry it.
pub(super) fn ds(kind: &str, uid: &str) -> Value {
    json!({"type": kind, "uid": uid})
}

/// A query of a panel: expression and legend.
pub(super) struct Q<'a>(pub &'a str, pub &'a str);

/// Threshold steps: the base colour, then (value, colour) upward.
pub(super) struct Steps<'a>(pub &'a str, pub &'a [(f64, &'a str)]);

impl Steps<'_> {
    fn json(&self) -> Value {
        let mut steps = vec![json!({"color": self.0, "value": null})];
        steps.extend(self.1.iter().map(|(v, c)| json!({"color": c, "value": v})));
        json!({"mode": "absolute", "steps": steps})
    }
}

const GREEN: Steps<'static> = Steps("green", &[]);

impl Panel {
    fn new(kind: &str, title: &str, description: &str, w: u32, h: u32) -> Panel {
        Panel {
            json: json!({
                "type": kind,
                "title": title,
                "description": description,
                "fieldConfig": {"defaults": {}, "overrides": []},
                "options": {},
            }),
            w,
            h,
        }
    }

    fn queries(mut self, source: &Value, queries: &[Q], instant: bool) -> Panel {
        let letters = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
        self.json["datasource"] = source.clone();
        self.json["targets"] = queries
            .iter()
            .enumerate()
            .map(|(i, Q(expr, legend))| {
                let mut t = json!({
                    "refId": (letters[i] as char).to_string(),
                    "datasource": source,
                    "expr": expr,
                    "legendFormat": legend,
                    "range": !instant,
                    "instant": instant,
                });
                if legend.is_empty() {
                    t["legendFormat"] = json!("__auto");
                }
                if source["type"] == "loki" {
                    // Loki targets say how to run in `queryType`.
                    t = json!({
                        "refId": t["refId"],
                        "datasource": source,
                        "expr": expr,
                        "legendFormat": t["legendFormat"],
                        "queryType": "range",
                    });
                }
                t
            })
            .collect();
        self
    }

    /// A time series graph; threshold steps are drawn as lines.
    pub fn timeseries(
        title: &str,
        description: &str,
        source: &Value,
        unit: &str,
        queries: &[Q],
        steps: Steps,
    ) -> Panel {
        let mut p =
            Panel::new("timeseries", title, description, 12, 8).queries(source, queries, false);
        p.json["fieldConfig"]["defaults"] = json!({
            "unit": unit,
            "thresholds": steps.json(),
            "custom": {
                "drawStyle": "line",
                "lineWidth": 1,
                "fillOpacity": 10,
                "showPoints": "never",
                "spanNulls": false,
                "thresholdsStyle": {"mode": if steps.1.is_empty() { "off" } else { "line" }},
            },
        });
        p.json["options"] = json!({
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": true},
            "tooltip": {"mode": "multi", "sort": "desc"},
        });
        p
    }

    /// Current values, coloured by the threshold steps.
    pub fn stat(
        title: &str,
        description: &str,
        source: &Value,
        unit: &str,
        queries: &[Q],
        steps: Steps,
    ) -> Panel {
        let mut p = Panel::new("stat", title, description, 6, 4).queries(source, queries, true);
        p.json["fieldConfig"]["defaults"] = json!({"unit": unit, "thresholds": steps.json()});
        p.json["options"] = json!({
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": false},
            "colorMode": "background",
            "graphMode": "none",
            "textMode": "auto",
            "justifyMode": "auto",
            "orientation": "auto",
        });
        p
    }

    /// An instant query shown as a table, one row per series.
    pub fn table(title: &str, description: &str, source: &Value, queries: &[Q]) -> Panel {
        let mut p = Panel::new("table", title, description, 24, 8).queries(source, queries, true);
        for t in p.json["targets"].as_array_mut().into_iter().flatten() {
            t["format"] = json!("table");
        }
        p.json["fieldConfig"]["defaults"] = json!({"thresholds": GREEN.json()});
        p.json["options"] = json!({"showHeader": true, "cellHeight": "sm"});
        p
    }

    /// Log lines of a LogQL stream selector.
    pub fn logs(title: &str, description: &str, source: &Value, expr: &str) -> Panel {
        let mut p =
            Panel::new("logs", title, description, 24, 10).queries(source, &[Q(expr, "")], false);
        p.json["options"] = json!({
            "showTime": true,
            "wrapLogMessage": true,
            "sortOrder": "Descending",
            "enableLogDetails": true,
            "dedupStrategy": "none",
            "prettifyLogMessage": false,
        });
        p
    }

    /// Markdown, no query.
    pub fn text(title: &str, markdown: &str, w: u32, h: u32) -> Panel {
        let mut p = Panel::new("text", title, "", w, h);
        p.json["options"] = json!({"mode": "markdown", "content": markdown});
        p
    }

    pub fn size(mut self, w: u32, h: u32) -> Panel {
        self.w = w;
        self.h = h;
        self
    }

    /// What to show when the query rightly returns nothing (see [`NO_VALUE_KEY`]).
    pub fn no_value(mut self, text: &str) -> Panel {
        self.json["fieldConfig"]["defaults"][NO_VALUE_KEY] = json!(text);
        self
    }

    pub fn min_max(mut self, min: Option<f64>, max: Option<f64>) -> Panel {
        let d = &mut self.json["fieldConfig"]["defaults"];
        if let Some(m) = min {
            d["min"] = json!(m);
        }
        if let Some(m) = max {
            d["max"] = json!(m);
        }
        self
    }

    /// Value → text and colour (`up`: 1 UP, 0 DOWN).
    pub fn mappings(mut self, pairs: &[(&str, &str, &str)]) -> Panel {
        let mut options = serde_json::Map::new();
        for (value, text, color) in pairs {
            options.insert(value.to_string(), json!({"text": text, "color": color}));
        }
        self.json["fieldConfig"]["defaults"]["mappings"] =
            json!([{"type": "value", "options": options}]);
        self
    }
}

/// A query variable over label values, with "All" (the regex `.*`, which also matches series
/// without the label: a single server has no `member`).
pub(super) fn label_var(
    name: &str,
    label: &str,
    source: &Value,
    definition: &str,
    current: Option<&str>,
) -> Value {
    let (text, value) = match current {
        Some(c) => (c.to_string(), c.to_string()),
        None => ("All".to_string(), "$__all".to_string()),
    };
    json!({
        "name": name,
        "label": label,
        "type": "query",
        "datasource": source,
        "definition": definition,
        "query": definition,
        "refresh": 2,
        "sort": 1,
        "multi": true,
        "includeAll": true,
        "allValue": ".*",
        "current": {"selected": true, "text": [text], "value": [value]},
        "options": [],
        "hide": 0,
    })
}
