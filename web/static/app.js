// tokenwatch admin console. Loaded from /admin/static (the CSP allows no inline
// script). Draws the dashboard charts from /admin/api/dashboard. Every label
// comes from the audit trail and may be attacker-chosen: it is only ever drawn
// on a canvas or set as textContent, never parsed as HTML.
(function () {
  'use strict';
  var root = document.getElementById('charts');
  if (!root || typeof Chart === 'undefined') { return; }

  var COLORS = ['#1f5fbf', '#c0392b', '#2e8b57', '#e6a23c', '#8e44ad', '#16a085', '#7f8c8d', '#d35400', '#2c3e50', '#27ae60'];
  var SEVERITY = { low: '#5b8def', medium: '#e6a23c', high: '#d9534f', critical: '#8e1b1b' };
  Chart.defaults.animation = false;
  Chart.defaults.maintainAspectRatio = false;

  function pad(n) { return (n < 10 ? '0' : '') + n; }
  function label(us, bucketUs) {
    var d = new Date(us / 1000);
    var day = d.getUTCFullYear() + '-' + pad(d.getUTCMonth() + 1) + '-' + pad(d.getUTCDate());
    if (bucketUs >= 86400000000) { return day; }
    return day.slice(5) + ' ' + pad(d.getUTCHours()) + ':' + pad(d.getUTCMinutes());
  }
  function bars(id, pairs, color, horizontal) {
    return new Chart(document.getElementById(id), {
      type: 'bar',
      data: {
        labels: pairs.map(function (p) { return p[0]; }),
        datasets: [{ label: 'failures', data: pairs.map(function (p) { return p[1]; }), backgroundColor: color }]
      },
      options: { indexAxis: horizontal ? 'y' : 'x', plugins: { legend: { display: false } } }
    });
  }

  function draw(d) {
    window.twDashboard = d;
    new Chart(document.getElementById('chart-over-time'), {
      type: 'line',
      data: {
        labels: d.over_time.map(function (b) { return label(b[0], d.bucket_us); }),
        datasets: [
          { label: 'success', data: d.over_time.map(function (b) { return b[1]; }), borderColor: '#2e8b57', backgroundColor: 'rgba(46,139,87,.15)', fill: true, tension: 0.2 },
          { label: 'failure', data: d.over_time.map(function (b) { return b[2]; }), borderColor: '#c0392b', backgroundColor: 'rgba(192,57,43,.15)', fill: true, tension: 0.2 }
        ]
      },
      options: { scales: { y: { beginAtZero: true } } }
    });
    new Chart(document.getElementById('chart-reasons'), {
      type: 'doughnut',
      data: {
        labels: d.failure_reasons.map(function (p) { return p[0]; }),
        datasets: [{ data: d.failure_reasons.map(function (p) { return p[1]; }), backgroundColor: COLORS }]
      },
      options: { plugins: { legend: { position: 'right' } } }
    });
    new Chart(document.getElementById('chart-alerts'), {
      type: 'bar',
      data: {
        labels: d.open_alerts.map(function (p) { return p[0]; }),
        datasets: [{ label: 'open alerts', data: d.open_alerts.map(function (p) { return p[1]; }),
          backgroundColor: d.open_alerts.map(function (p) { return SEVERITY[p[0]] || '#888'; }) }]
      },
      options: { plugins: { legend: { display: false } }, scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } }
    });
    bars('chart-ips', d.top_ips, '#c0392b', true);
    bars('chart-users', d.top_users, '#8e44ad', true);
    root.setAttribute('data-ready', 'true');
  }

  fetch(root.getAttribute('data-src'), { credentials: 'same-origin', headers: { Accept: 'application/json' } })
    .then(function (r) { if (!r.ok) { throw new Error('HTTP ' + r.status); } return r.json(); })
    .then(draw)
    .catch(function (e) {
      var p = document.createElement('p');
      p.className = 'error';
      p.textContent = 'Could not load the charts: ' + e.message;
      root.parentNode.insertBefore(p, root);
      root.setAttribute('data-ready', 'error');
    });
}());
