// exitgate dashboard: draws the uPlot charts and asks before destructive actions.
// Loaded as a file (the CSP allows no inline script); no build step.
(function () {
  "use strict";

  var COLORS = ["#2a7ae2", "#e2732a", "#2aa36b", "#c0392b", "#8e44ad"];

  function human(v) {
    if (v == null) return "";
    var units = ["", "k", "M", "G", "T"], i = 0;
    while (Math.abs(v) >= 1000 && i < units.length - 1) { v /= 1000; i++; }
    return (Math.round(v * 10) / 10) + units[i];
  }

  function draw(box) {
    var holder = box.querySelector(".chart");
    var keys = holder.dataset.series.split(",");
    var bars = holder.dataset.kind === "bars";
    var labels = (holder.dataset.labels || holder.dataset.series).split(",");
    holder.dataset.ready = "0";  // until this draw is done (tests wait for "1")
    var url = holder.dataset.src;
    var span = box.dataset.range;
    if (span) url += (url.indexOf("?") < 0 ? "?" : "&") + "span=" + encodeURIComponent(span);
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(function (data) {
        var series = [{}];
        var columns = [data.x];
        keys.forEach(function (k, i) {
          var color = COLORS[i % COLORS.length];
          series.push({ label: labels[i], stroke: color, width: 2,
                        fill: bars ? color + "99" : undefined,
                        paths: bars ? uPlot.paths.bars({ size: [0.35, 40], align: i === 0 ? -1 : 1 }) : undefined,
                        points: { show: !bars, size: 4 },
                        value: function (u, v) { return human(v); } });
          columns.push(data[k] || []);
        });
        holder.textContent = "";
        if (holder._plot) holder._plot.destroy();
        var opts = {
          width: Math.max(300, holder.clientWidth || 600), height: 220, series: series,
          axes: [{}, { values: function (u, vals) { return vals.map(human); }, size: 60 }],
          scales: { y: { range: function (u, min, max) { return [0, Math.max(1, max) * 1.1]; } } },
        };
        if (data.from && data.to) {  // the whole window, however few points it has
          opts.scales.x = { time: true, range: function () { return [data.from, data.to]; } };
        }
        holder._plot = new uPlot(opts, columns, holder);
        holder.dataset.points = String(data.x.length);
        holder.dataset.ready = "1";
      })
      .catch(function (err) { holder.textContent = "chart unavailable: " + err.message; });
  }

  function init() {
    document.querySelectorAll(".chart-box").forEach(function (box) {
      draw(box);
      box.querySelectorAll("button[data-range]").forEach(function (b) {
        b.addEventListener("click", function () {
          box.dataset.range = b.dataset.range;
          box.querySelectorAll("button[data-range]").forEach(function (o) {
            o.classList.toggle("active", o === b);
          });
          draw(box);
        });
      });
    });
    document.querySelectorAll("form[data-confirm]").forEach(function (f) {
      f.addEventListener("submit", function (e) {
        if (!window.confirm(f.dataset.confirm)) e.preventDefault();
      });
    });
    var refresh = document.querySelector("[data-refresh-charts]");
    if (refresh) {
      setInterval(function () {
        document.querySelectorAll(".chart-box").forEach(draw);
      }, Number(refresh.dataset.refreshCharts) * 1000);
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
