// A Node messenger Speaker against a listener (colony's, or Node's own):
//   node speaker.js HOST:PORT seed        the seed's web.js/data.js flow
//   node speaker.js HOST:PORT load N      N concurrent `add two numbers` requests
//   node speaker.js HOST:PORT bench SECS  sequential p50, then pipelined for SECS
//   node speaker.js HOST:PORT garbage     bad JSON on its own connection, then one request
//   node speaker.js HOST:PORT ask SUBJECT one request of {"userId":5}
// Each result is printed as one JSON line.
var net = require('net');
var messenger = require('messenger');

var address = process.argv[2];
var mode = process.argv[3];
var arg = Number(process.argv[4]) || 0;
var speaker = messenger.createSpeaker(address);

function print(what) { console.log(JSON.stringify(what)); }

function ask(subject, data) {
  return new Promise(function (resolve) { speaker.request(subject, data, resolve); });
}

function connected() {
  return new Promise(function (resolve, reject) {
    var deadline = Date.now() + 10000;
    (function poll() {
      if (speaker.sockets.length > 0) return resolve();
      if (Date.now() > deadline) return reject(new Error('not connected to ' + address));
      setTimeout(poll, 10);
    })();
  });
}

async function seed() {
  print({ popular: await ask('get me some popular users', { limit: 2 }) });
  print({ anonymous: await ask('delete this user', {}) });
  print({ member: await ask('delete this user', { userId: 2 }) });
  print({ unrouted: await ask('no such subject', {}) });
  speaker.shout('user deleted', { userId: 3 });
  print({ shouted: true });
}

async function load(n) {
  var calls = [];
  for (var i = 0; i < n; i++) {
    calls.push(ask('add two numbers', { a: i, b: 1 }).then((function (i) {
      return function (reply) { return reply && reply.sum === i + 1 ? null : reply; };
    })(i)));
  }
  var results = await Promise.all(calls);
  var wrong = results.filter(function (r) { return r !== null; });
  print({ correct: n - wrong.length, wrong: wrong.length, first_wrong: wrong[0] });
}

async function bench(seconds) {
  var samples = [];
  for (var i = 0; i < 5000; i++) {
    var start = process.hrtime.bigint();
    await ask('add two numbers', { a: i, b: 1 });
    samples.push(Number(process.hrtime.bigint() - start) / 1000);
  }
  samples.sort(function (x, y) { return x - y; });
  var p50 = samples[Math.floor(samples.length / 2)];
  var done = 0, inFlight = 0, until = Date.now() + seconds * 1000, started = process.hrtime.bigint();
  await new Promise(function (resolve) {
    function more() {
      while (inFlight < 64 && Date.now() < until) {
        inFlight++;
        speaker.request('add two numbers', { a: done, b: 1 }, function () {
          inFlight--; done++;
          if (Date.now() < until) more(); else if (inFlight === 0) resolve();
        });
      }
    }
    more();
  });
  var secs = Number(process.hrtime.bigint() - started) / 1e9;
  print({ p50_us: p50, per_sec: done / secs });
}

async function garbage() {
  var parts = address.split(':');
  var bad = net.connect(Number(parts[1]), parts[0]);
  var closed = new Promise(function (resolve) { bad.on('close', resolve); bad.on('error', function () {}); });
  bad.write('{"id":"id-1","subject":"add two numbers","data":{"a":1,\0');
  await closed;
  print({ garbage_closed: true });
  print({ after: await ask('add two numbers', { a: 40, b: 2 }) });
}

connected().then(function () {
  if (mode === 'seed') return seed();
  if (mode === 'load') return load(arg);
  if (mode === 'bench') return bench(arg);
  if (mode === 'garbage') return garbage();
  if (mode === 'ask') return ask(process.argv[4], { userId: 5 }).then(function (reply) { print({ reply: reply }); });
  throw new Error('unknown mode ' + mode);
}).then(function () {
  setTimeout(function () { process.exit(0); }, 50);
}, function (e) {
  console.error(e.stack || String(e));
  process.exit(1);
});
