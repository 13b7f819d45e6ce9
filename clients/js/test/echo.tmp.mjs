import { WebSocketServer } from 'ws';
const srv = new WebSocketServer({ port: 0 });
srv.on('connection', (s) => s.on('message', (m) => s.send(m.toString())));
srv.on('listening', () => console.log(`PORT ${srv.address().port}`));
