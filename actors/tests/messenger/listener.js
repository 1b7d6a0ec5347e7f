// A Node messenger listener, as data.js and stream.js run them:
//   node listener.js PORT
// Serves `recommend` (and `add two numbers`, for the bench) and prints every
// `user deleted` shout it hears as a JSON line.
var messenger = require('messenger');

var port = Number(process.argv[2]);
var listener = messenger.createListener(port);

listener.on('recommend', function (message, data) {
  message.reply({ users: ['ada', 'grace'], for: data && data.userId, by: 'node' });
});

listener.on('add two numbers', function (message, data) {
  message.reply({ sum: data.a + data.b });
});

listener.on('user deleted', function (message, data) {
  console.log(JSON.stringify({ shout: data }));
});

console.log(JSON.stringify({ listening: port }));
